"""LLaVA logits parity with transformers, one case per (layout x model variant).

Each case is a tiny random checkpoint in one of the layouts we read; together
they cover both projector kinds, both selection strategies, negative, zero-depth
and positive feature layers, GQA/MQA/MHA, tied and untied embeddings, sharded and
bfloat16 files. The batch mixes two images in one row, a text-only row and right
padding.
"""
import copy
import json
import os

import numpy as np
import pytest
import torch

import hf_tiny as H
from comd_jax import load_pretrained

TOL = 1e-4


def _save(model, directory, **kw) -> str:
    model.save_pretrained(directory, **kw)
    return str(directory)


def llava_hf_layout(tmp):
    """llava-hf's published layout: `vision_tower.vision_model.*`, `language_model.model.*`."""
    ref = H.llava(1, H.llama_kwargs(), H.clip_vision_kwargs())
    written = _save(ref, tmp / "written")
    to_hf = lambda k: k.replace("vision_tower.", "vision_tower.vision_model.", 1)
    return H.rename(written, tmp / "hf", to_hf), ref, {}, dict(projector="mlp2x_gelu", num_kv_heads=2)


def transformers5_sharded(tmp):
    """What transformers 5 writes (`vision_tower.*`), sharded; MHA, tied, 'full', layer -1."""
    ref = H.llava(2, H.llama_kwargs(num_key_value_heads=4, tie_word_embeddings=True), H.clip_vision_kwargs(),
                  vision_feature_select_strategy="full", vision_feature_layer=-1)
    directory = _save(ref, tmp / "t5", max_shard_size="40KB")
    assert os.path.exists(os.path.join(directory, "model.safetensors.index.json"))
    return directory, ref, {}, dict(select_strategy="full", feature_layer=-1, tie_word_embeddings=True)


def transformers5_module_names(tmp):
    """transformers 5's in-memory names (`model.language_model.*`, `lm_head.weight`); MQA, layer 1."""
    ref = H.llava(3, H.llama_kwargs(num_key_value_heads=1), H.clip_vision_kwargs(), vision_feature_layer=1)
    directory = _save(ref, tmp / "modules", save_original_format=False)
    assert "model.language_model.embed_tokens.weight" in H.read_tensors(directory)
    return directory, ref, {}, dict(feature_layer=1, num_kv_heads=1)


def _original_release(tmp, ref, projector_keys, vision_dir, **mm):
    """The original LLaVA release: a `llava_llama` Llama checkpoint with `model.mm_projector`,
    its CLIP tower in a separate directory."""
    tensors = H.read_tensors(_save(ref, tmp / "written"))
    out = {}
    for key, value in tensors.items():
        if key.startswith("language_model.model."):
            out["model." + key[len("language_model.model."):]] = value
        elif key == "language_model.lm_head.weight":
            out["lm_head.weight"] = value
    out.update(projector_keys)
    out["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)  # old Llama buffer, ignored
    config = {**ref.config.text_config.to_dict(), "model_type": "llava_llama",
              "architectures": ["LlavaLlamaForCausalLM"], "mm_vision_tower": "openai/clip-vit-tiny",
              "mm_hidden_size": ref.config.vision_config.hidden_size, "mm_use_im_start_end": False, **mm}
    main = H.write_checkpoint(tmp / "main", config, out)
    return main, ref, dict(vision_tower=vision_dir, image_token_id=H.IMAGE_TOKEN)


def original_mlp2x_clip_model(tmp):
    """LLaVA-1.5 release: mlp2x_gelu as `mm_projector.0/2`; vision tower = a full CLIPModel."""
    from transformers import CLIPConfig, CLIPModel

    ref = H.llava(4, H.llama_kwargs(), H.clip_vision_kwargs())
    proj = ref.model.multi_modal_projector
    keys = {f"model.mm_projector.{i}.{p}": getattr(layer, p).detach().numpy()
            for i, layer in ((0, proj.linear_1), (2, proj.linear_2)) for p in ("weight", "bias")}
    clip = CLIPModel(CLIPConfig(vision_config=H.clip_vision_kwargs(), projection_dim=16, text_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=50,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)))
    clip.vision_model.load_state_dict(ref.model.vision_tower.state_dict())
    vision = _save(clip, tmp / "clip")
    main, ref, kw = _original_release(tmp, ref, keys, vision, mm_projector_type="mlp2x_gelu",
                                      mm_vision_select_layer=-2, mm_vision_select_feature="patch")
    return main, ref, kw, dict(projector="mlp2x_gelu", select_strategy="default")


def original_linear_clip_vision(tmp):
    """LLaVA-1 release: a single Linear `mm_projector`, CLS kept ('cls_patch'), layer -3
    (= the embeddings of a 2-layer tower); tower = CLIPVisionModel in v4 naming (`vision_model.*`)."""
    ref = H.llava(5, H.llama_kwargs(), H.clip_vision_kwargs(),
                  vision_feature_select_strategy="full", vision_feature_layer=-3)
    ref.model.multi_modal_projector = H.randomize_(torch.nn.Linear(32, 32), 55)
    linear = ref.model.multi_modal_projector
    keys = {"model.mm_projector.weight": linear.weight.detach().numpy(),
            "model.mm_projector.bias": linear.bias.detach().numpy()}
    tower = {"vision_model." + k: v.detach().numpy() for k, v in ref.model.vision_tower.state_dict().items()}
    vision_config = {**ref.config.vision_config.to_dict(), "model_type": "clip_vision_model"}
    vision = H.write_checkpoint(tmp / "clip_vision", vision_config, tower)
    main, ref, kw = _original_release(tmp, ref, keys, vision, mm_projector_type="linear",
                                      mm_vision_select_layer=-3, mm_vision_select_feature="cls_patch")
    return main, ref, kw, dict(projector="linear", select_strategy="full", feature_layer=-3)


def original_tower_inside(tmp):
    """Original-release fine-tunes that trained the tower carry it as
    `model.vision_tower.vision_tower.vision_model.*`; it must beat the (stale) CLIP directory."""
    ref = H.llava(6, H.llama_kwargs(), H.clip_vision_kwargs())
    proj = ref.model.multi_modal_projector
    keys = {f"model.mm_projector.{i}.{p}": getattr(layer, p).detach().numpy()
            for i, layer in ((0, proj.linear_1), (2, proj.linear_2)) for p in ("weight", "bias")}
    keys.update({"model.vision_tower.vision_tower.vision_model." + k: v.detach().numpy()
                 for k, v in ref.model.vision_tower.state_dict().items()})
    stale = H.randomize_(type(ref.model.vision_tower)(ref.model.vision_tower.config), 66)
    stale.save_pretrained(tmp / "stale_clip")
    main, ref, kw = _original_release(tmp, ref, keys, str(tmp / "stale_clip"), mm_projector_type="mlp2x_gelu",
                                      mm_vision_select_layer=-2, mm_vision_select_feature="patch")
    return main, ref, kw, dict(projector="mlp2x_gelu")


CASES = [llava_hf_layout, transformers5_sharded, transformers5_module_names,
         original_mlp2x_clip_model, original_linear_clip_vision, original_tower_inside]


@pytest.fixture(scope="module", params=CASES, ids=lambda f: f.__name__)
def case(request, tmp_path_factory):
    directory, ref, load_kw, expect = request.param(tmp_path_factory.mktemp(request.param.__name__))
    return directory, ref, load_kwargs(load_kw), expect


def load_kwargs(kw):
    return {k: str(v) if k == "vision_tower" else v for k, v in kw.items()}


def _check_config(cfg, expect):
    text_fields = {"num_kv_heads", "tie_word_embeddings"}
    for name, value in expect.items():
        got = getattr(cfg.text if name in text_fields else cfg, name)
        assert got == value, f"loaded {name}={got!r}, the checkpoint says {value!r}"


def test_logits_match_transformers(case):
    directory, ref, load_kw, expect = case
    ours = load_pretrained(directory, **load_kw)
    _check_config(ours.cfg, expect)
    ids, mask, pixels = H.llava_batch(ours.cfg.num_image_tokens)
    got = np.asarray(ours.logits(ids, pixels, mask))
    want = H.torch_logits(ref, ids, mask, pixels)
    assert got.shape == want.shape and got.dtype == np.float32
    assert H.rel_err(got, want) < TOL


def test_bfloat16_checkpoint_loads_in_float32(tmp_path):
    ref = H.llava(1, H.llama_kwargs(), H.clip_vision_kwargs())
    with torch.no_grad():  # round the weights to bf16 values, keep computing in float32
        for p in ref.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    # (A float() of the bf16 model itself would not do: .to() rounds rotary buffers too.)
    directory = _save(copy.deepcopy(ref).to(torch.bfloat16), tmp_path / "bf16")
    with open(os.path.join(directory, "config.json")) as f:
        assert json.load(f)["dtype"] == "bfloat16"
    ours = load_pretrained(directory)  # param_dtype float32 by default
    assert ours.text.embed[...].dtype == np.float32
    ids, mask, pixels = H.llava_batch(ours.cfg.num_image_tokens)
    # The same bf16 weights, computed in float32 on both sides: float32 tolerance holds.
    want = H.torch_logits(ref, ids, mask, pixels)
    assert H.rel_err(ours.logits(ids, pixels, mask), want) < TOL
