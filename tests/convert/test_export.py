"""save_pretrained writes what transformers' from_pretrained loads — every weight
found, none left over — and the logits stay ours; sharded and bf16 exports too."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.traverse_util import flatten_dict
from safetensors import safe_open

import hf_tiny as H
from comd_jax import load_pretrained, save_pretrained


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    directory = tmp_path_factory.mktemp("export") / "llava"
    H.llava(1, H.llama_kwargs(), H.clip_vision_kwargs()).save_pretrained(directory)
    return load_pretrained(str(directory))


def _params(model) -> dict:
    return {k: np.asarray(v) for k, v in flatten_dict(nnx.state(model).to_pure_dict()).items()}


def _from_pretrained(cls, directory):
    model, info = cls.from_pretrained(directory, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(kind), f"{kind}: {info[kind]}"
    return model.eval()


def test_llava_round_trip_through_transformers(llava, tmp_path):
    from transformers import LlavaForConditionalGeneration

    save_pretrained(llava, str(tmp_path))
    keys = H.read_tensors(tmp_path)
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in keys  # llava-hf layout
    assert "language_model.lm_head.weight" in keys
    theirs = _from_pretrained(LlavaForConditionalGeneration, tmp_path)
    assert theirs.config.vision_feature_layer == -2 and theirs.config.image_token_id == H.IMAGE_TOKEN
    ids, mask, pixels = H.llava_batch(llava.cfg.num_image_tokens)
    assert H.rel_err(llava.logits(ids, pixels, mask), H.torch_logits(theirs, ids, mask, pixels)) < 1e-4


def test_multi_shard_export_loads_both_ways(llava, tmp_path):
    from transformers import LlavaForConditionalGeneration

    save_pretrained(llava, str(tmp_path), max_shard_bytes=40_000)
    with open(tmp_path / "model.safetensors.index.json") as f:
        shards = set(json.load(f)["weight_map"].values())
    assert len(shards) >= 3 and all(os.path.exists(tmp_path / s) for s in shards)
    _from_pretrained(LlavaForConditionalGeneration, tmp_path)
    again = _params(load_pretrained(str(tmp_path)))
    for path, value in _params(llava).items():
        np.testing.assert_array_equal(again[path], value, err_msg=str(path))


def test_bfloat16_export(llava, tmp_path):
    save_pretrained(llava, str(tmp_path), dtype="bfloat16")
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    again = _params(load_pretrained(str(tmp_path)))
    for path, value in _params(llava).items():
        rounded = value.astype(jnp.bfloat16).astype(np.float32)  # numpy (ml_dtypes): no compiles
        np.testing.assert_array_equal(again[path], rounded, err_msg=str(path))


def test_text_only_round_trip(tmp_path):
    from transformers import LlamaForCausalLM

    H.llama(42, tie_word_embeddings=True).save_pretrained(tmp_path / "in")
    ours = load_pretrained(str(tmp_path / "in"))
    save_pretrained(ours, str(tmp_path / "out"))
    theirs = _from_pretrained(LlamaForCausalLM, tmp_path / "out")
    assert theirs.config.tie_word_embeddings
    ids = np.random.default_rng(3).integers(0, H.VOCAB, (2, 20))
    assert H.rel_err(ours.logits(ids), H.torch_logits(theirs, ids)) < 1e-4


def test_llava_export_carries_the_processor_servers_load(llava, tmp_path):
    """transformers serve and vLLM load the directory with AutoProcessor; without
    processor_config.json (patch size, feature selection) LlavaProcessor cannot expand
    `<image>` and every image request failed with a 500."""
    from PIL import Image
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoProcessor, CLIPImageProcessor, PreTrainedTokenizerFast

    save_pretrained(llava, str(tmp_path))
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *(f"w{i}" for i in range(3, H.IMAGE_TOKEN)),
                                         "<image>"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  extra_special_tokens={"image_token": "<image>"})
    tok.save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": H.IMAGE_SIZE},
                       crop_size={"height": H.IMAGE_SIZE, "width": H.IMAGE_SIZE}).save_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(processor).__name__ == "LlavaProcessor"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 20, 3), dtype=np.uint8))
    batch = processor(text="<image>\nw5 w6", images=image, return_tensors="np")
    assert int((batch["input_ids"] == H.IMAGE_TOKEN).sum()) == llava.cfg.num_image_tokens == H.PATCHES
    assert batch["pixel_values"].shape[-2:] == (H.IMAGE_SIZE, H.IMAGE_SIZE)
