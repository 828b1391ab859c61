"""config.json parsing agrees with transformers on published configs, including the
fields they leave to transformers' defaults."""
import copy

import pytest

from comd_jax.convert.hf_config import vlm_from_hf

# llava-hf/llava-1.5-7b-hf as published: text_config saved as a diff against
# LlamaConfig's defaults (no hidden_size, layers or heads).
LLAVA_15_HF = {
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
    "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                    "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                    "torch_dtype": "float16", "vocab_size": 32064},
    "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                      "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064,
}

# The original release (liuhaotian/llava-v1.5-7b): a full Llama config plus mm_* fields.
LLAVA_15_ORIGINAL = {
    "architectures": ["LlavaLlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "image_aspect_ratio": "pad", "initializer_range": 0.02, "intermediate_size": 11008,
    "max_position_embeddings": 4096, "mm_hidden_size": 1024, "mm_projector_type": "mlp2x_gelu",
    "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2, "mm_vision_tower": "openai/clip-vit-large-patch14-336",
    "model_type": "llava_llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "pad_token_id": 0, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "tie_word_embeddings": False, "torch_dtype": "float16", "use_cache": True, "vocab_size": 32000,
}


def test_llava_hf_diff_config_matches_transformers():
    from transformers import LlavaConfig

    theirs = LlavaConfig(**copy.deepcopy(LLAVA_15_HF))
    ours = vlm_from_hf(copy.deepcopy(LLAVA_15_HF))
    t, v = theirs.text_config, theirs.vision_config
    assert (ours.text.vocab_size, ours.text.hidden_size, ours.text.intermediate_size, ours.text.num_layers,
            ours.text.num_heads, ours.text.num_kv_heads, ours.text.head_dim, ours.text.max_position_embeddings,
            ours.text.rms_norm_eps, ours.text.tie_word_embeddings) == (
        t.vocab_size, t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads,
        t.num_key_value_heads, t.head_dim, t.max_position_embeddings, t.rms_norm_eps, theirs.tie_word_embeddings)
    assert ours.text.rope.theta == t.rope_parameters["rope_theta"] and ours.text.rope.type == "default"
    assert (ours.vision.hidden_size, ours.vision.intermediate_size, ours.vision.num_layers, ours.vision.num_heads,
            ours.vision.image_size, ours.vision.patch_size, ours.vision.hidden_act, ours.vision.layer_norm_eps) == (
        v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, v.image_size,
        v.patch_size, v.hidden_act, v.layer_norm_eps)
    assert (ours.image_token_id, ours.feature_layer, ours.select_strategy, ours.projector) == (
        theirs.image_token_id, theirs.vision_feature_layer, theirs.vision_feature_select_strategy, "mlp2x_gelu")
    assert ours.num_image_tokens == 576


@pytest.mark.parametrize("feature,strategy", [("patch", "default"), ("cls_patch", "full")])
def test_original_release_config(feature, strategy):
    config = {**LLAVA_15_ORIGINAL, "mm_vision_select_feature": feature}
    ours = vlm_from_hf(config, image_token_id=32000)
    assert (ours.text.hidden_size, ours.text.num_layers, ours.text.num_kv_heads, ours.text.rms_norm_eps) == (
        4096, 32, 32, 1e-5)
    assert (ours.projector, ours.feature_layer, ours.select_strategy) == ("mlp2x_gelu", -2, strategy)
