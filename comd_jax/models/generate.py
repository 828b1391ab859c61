"""Greedy decoding with the KV cache, for parity tests and quick checks.

The prompt is prefilled in one pass; then one token per step runs under a
single jitted `lax.while_loop` that stops once every row has emitted EOS.
Prompts are right-padded: row b holds `lengths[b]` real tokens at positions
0..lengths[b]-1 and continues from position lengths[b]. Pad tokens written to
the cache beyond a row's length are harmless: each step writes its own slot
before attending, and never looks past it. (Batched serving lives in
`comd_jax.serve`.)
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from comd_jax.multihost import host_array


def _prompt_lengths(attention_mask, batch: int, length: int) -> np.ndarray:
    if attention_mask is None:
        return np.full((batch,), length, np.int32)
    mask = np.asarray(attention_mask).astype(bool)
    lengths = mask.sum(axis=1)
    right_padded = mask == (np.arange(length)[None, :] < lengths[:, None])
    if not right_padded.all() or (lengths == 0).any():
        raise ValueError("greedy_generate expects right-padded prompts (each row: ones, then zeros) "
                         "with at least one real token")
    return lengths.astype(np.int32)


def greedy_generate(model, input_ids, pixel_values=None, max_new_tokens: int = 16,
                    eos_token_id: Optional[Union[int, Sequence[int]]] = None,
                    attention_mask=None, pad_token_id: Optional[int] = None) -> np.ndarray:
    """New tokens [B, max_new_tokens] (int32), chosen by argmax.

    `input_ids`/`pixel_values` follow `VLM.logits` (transformers' LLaVA
    convention); `attention_mask` marks right padding. After a row emits one
    of `eos_token_id` (an id or a list), its later slots hold `pad_token_id`
    (default: the first EOS id, else 0), as transformers' `generate` pads.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    input_ids = jnp.asarray(input_ids, jnp.int32)
    b, t = input_ids.shape
    lengths = jnp.asarray(_prompt_lengths(attention_mask, b, t))
    eos = np.atleast_1d(np.asarray([] if eos_token_id is None else eos_token_id, np.int32))
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if eos.size else 0
    pixels, offsets = model.images_in_order(input_ids, pixel_values)
    out = _generate(model, input_ids, pixels, offsets, lengths, jnp.asarray(eos),
                    jnp.int32(pad_token_id), max_new_tokens)
    return host_array(out)  # also when the model spans several hosts (the output is then global)


@nnx.jit(static_argnames="max_new_tokens")
def _generate(model, input_ids_bt, pixels, offsets_b, lengths_b, eos_e, pad_id, max_new_tokens: int):
    b, t = input_ids_bt.shape
    rows = jnp.arange(b)
    cache = model.init_cache(b, t + max_new_tokens)
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    logits, cache = model.decode(model.embed(input_ids_bt, pixels, offsets_b), positions, cache)
    first = jnp.argmax(logits[rows, lengths_b - 1], axis=-1).astype(jnp.int32)
    is_eos = lambda tok_b: (tok_b[:, None] == eos_e[None, :]).any(axis=-1)
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)

    def cond(carry):
        step, _, done, _, _ = carry
        return (step < max_new_tokens) & ~done.all()

    def body(carry):
        step, prev_b, done, out, cache = carry
        # Generated ids are plain tokens, image placeholder included: no splicing here,
        # as transformers embeds them during decoding.
        embeds = model.text.embed_tokens(prev_b[:, None])
        logits, cache = model.decode(embeds, (lengths_b + step - 1)[:, None], cache)
        token = jnp.where(done, pad_id, jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32))
        return step + 1, token, done | is_eos(token), out.at[:, step].set(token), cache

    carry = (jnp.int32(1), first, is_eos(first), out, cache)
    return jax.lax.while_loop(cond, body, carry)[3]
