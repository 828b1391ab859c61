"""Rotary scaling variants against transformers: frequencies, then whole-model logits
of a plain Llama checkpoint at positions past the original context length.

Configs come in both spellings real checkpoints use: v4 (`rope_theta` +
`rope_scaling`, some with a top-level `original_max_position_embeddings` as
Phi-3 writes it) and v5 (`rope_parameters`), including the fields transformers
fills in when absent (original length, longrope/yarn factor).
"""
import copy
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import hf_tiny as H
from comd_jax import load_pretrained
from comd_jax.convert.hf_config import decoder_from_hf
from comd_jax.models import rope as rope_lib

ORIG = 16  # original context; sequences of 40 go past it
SHORT, LONG = [1.0, 1.1, 1.3, 1.6], [2.0, 3.0, 5.0, 8.0]  # longrope: head_dim / 2 factors

# name -> config.json fields (besides the model shape)
VARIANTS = {
    "default": dict(max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "linear": dict(max_position_embeddings=64, rope_theta=10000.0,
                   rope_scaling={"type": "linear", "factor": 4.0}),
    "dynamic": dict(max_position_embeddings=ORIG, rope_theta=10000.0,
                    rope_scaling={"type": "dynamic", "factor": 2.0}),
    "yarn": dict(max_position_embeddings=64, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": ORIG,
        "beta_fast": 8.0, "beta_slow": 2.0}),
    "yarn_mscale_no_original": dict(max_position_embeddings=64, rope_theta=10000.0, rope_scaling={
        "type": "yarn", "factor": 4.0, "mscale": 1.2, "mscale_all_dim": 0.8}),
    "llama3": dict(max_position_embeddings=64, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": ORIG}),
    "longrope_no_factor": dict(max_position_embeddings=64, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "short_factor": SHORT, "long_factor": LONG,
        "original_max_position_embeddings": ORIG}),
    "longrope_phi3": dict(max_position_embeddings=64, rope_theta=10000.0, original_max_position_embeddings=ORIG,
                          rope_scaling={"type": "longrope", "short_factor": SHORT, "long_factor": LONG}),
}
SHAPE = dict(vocab_size=H.VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "default"])
@pytest.mark.parametrize("seq_len", [12, 40])
def test_inv_freq_matches_transformers(name, seq_len):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    fields = {**SHAPE, **VARIANTS[name]}
    theirs = LlamaConfig(**copy.deepcopy(fields))  # transformers edits the dicts it is given
    kind = theirs.rope_parameters["rope_type"]
    want, want_scale = ROPE_INIT_FUNCTIONS[kind](theirs, "cpu", seq_len=seq_len)
    ours = decoder_from_hf(copy.deepcopy(fields))
    assert ours.rope.type == kind
    got, scale = rope_lib.inv_freq_for(ours.rope, ours.head_dim, ours.max_position_embeddings,
                                       jnp.arange(seq_len)[None])
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-6)
    assert scale == pytest.approx(want_scale, rel=1e-6)


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama") / "base"
    H.llama(11).save_pretrained(directory)
    return directory


LOGIT_VARIANTS = ["default", "linear", "dynamic", "yarn", "llama3", "longrope_phi3"]


@pytest.mark.parametrize("name", LOGIT_VARIANTS)
def test_llama_logits_past_original_length(name, base_checkpoint, tmp_path):
    from transformers import LlamaForCausalLM

    with open(os.path.join(base_checkpoint, "config.json")) as f:
        config = json.load(f)
    config.pop("rope_parameters")
    config.update(copy.deepcopy(VARIANTS[name]))
    directory = H.with_config(base_checkpoint, tmp_path / name, config)
    ref = LlamaForCausalLM.from_pretrained(directory).eval()  # fresh rotary state per variant
    ours = load_pretrained(str(directory))
    assert ours.cfg.vision is None and ours.cfg.text.rope.type == ref.config.rope_parameters["rope_type"]
    ids = np.random.default_rng(0).integers(0, H.VOCAB, (2, 40))
    assert H.rel_err(ours.logits(ids), H.torch_logits(ref, ids)) < 1e-4
