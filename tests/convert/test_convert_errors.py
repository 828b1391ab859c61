"""A checkpoint that does not fit the model fails loudly, naming the key (and both
shapes), instead of loading something half right."""
import json
import os

import numpy as np
import pytest
from flax import nnx

import hf_tiny as H
from comd_jax import load_pretrained, save_pretrained
from comd_jax.models import build
from comd_jax.models.config import DecoderConfig, VisionConfig, VLMConfig


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("errors") / "llama"
    H.llama(41).save_pretrained(directory)
    return str(directory)


def _edited(src, dst, edit):
    tensors = H.read_tensors(src)
    edit(tensors)
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    return str(H.write_checkpoint(dst, config, tensors))


def test_missing_key(llama_dir, tmp_path):
    key = "model.layers.1.self_attn.k_proj.weight"
    directory = _edited(llama_dir, tmp_path / "ckpt", lambda t: t.pop(key))
    with pytest.raises(KeyError, match=f"missing key '{key}'"):
        load_pretrained(directory)


def test_missing_lm_head_of_untied_model(llama_dir, tmp_path):
    directory = _edited(llama_dir, tmp_path / "ckpt", lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ValueError, match="lm_head.weight"):
        load_pretrained(directory)


def test_unknown_key(llama_dir, tmp_path):
    key = "model.layers.0.mlp.extra_proj.weight"
    directory = _edited(llama_dir, tmp_path / "ckpt", lambda t: t.update({key: np.zeros((4, 4), np.float32)}))
    with pytest.raises(ValueError, match=f"unknown keys \\['{key}'\\]"):
        load_pretrained(directory)
    model = load_pretrained(directory, strict=False)  # opting out loads the rest
    assert model.text.layers.up.kernel[...].shape == (2, 32, 64)


def test_shape_mismatch_names_both_shapes(llama_dir, tmp_path):
    key = "model.layers.0.mlp.up_proj.weight"
    directory = _edited(llama_dir, tmp_path / "ckpt",
                        lambda t: t.update({key: np.zeros((60, 32), np.float32)}))
    with pytest.raises(ValueError, match=rf"'{key}' has shape \(60, 32\), expected \(64, 32\)"):
        load_pretrained(directory)


def test_linear_projector_cannot_become_transformers_llava(tmp_path):
    cfg = VLMConfig(text=DecoderConfig(vocab_size=H.VOCAB, hidden_size=32, intermediate_size=64, num_layers=1,
                                       num_heads=4, num_kv_heads=2),
                    vision=VisionConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                                        image_size=16, patch_size=4),
                    projector="linear", image_token_id=H.IMAGE_TOKEN)
    model = nnx.merge(*build.abstract_model(cfg))  # shapes only: the check comes first
    with pytest.raises(ValueError, match="two-layer projector"):
        save_pretrained(model, str(tmp_path / "out"))
