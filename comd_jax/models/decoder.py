"""Llama-family decoder: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Blocks are stacked along a leading 'layers' axis and run with `lax.scan`; an
optional KV cache serves incremental decoding: one buffer per layer, keys
[batch, kv_heads, head_dim, slots] and values [batch, kv_heads, slots, head_dim],
the layouts attention multiplies by. A token at position p is written to cache
slot p and attends to slots <= p, so rows of a batch may sit at different lengths.

A cached pass runs the layers unrolled, each on its own buffers, which it updates
in place: a decode step reads the cache once and copies none of it. (A stacked
cache sliced per layer inside the scan made XLA:CPU copy every layer's slice every
step: 9 of 25 ms at batch 128.)
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from comd_jax.models import rope as rope_lib
from comd_jax.models.config import DecoderConfig
from comd_jax.models.layers import (Dense, RMSNorm, activation, attention, cached_attention, constrain, call_layer,
                                    normal_param, scan_layers, take_positions)

BATCH_LENGTH_EMBED = ("batch", "length", "embed")
# One layer's KV cache buffers, by logical axis: keys with head_dim before the slots, values after.
CACHE_AXES = {"k": ("batch", "kv_heads", "head_dim", None), "v": ("batch", "kv_heads", None, "head_dim")}


def cache_shapes(cfg: DecoderConfig, batch: int, slots: int) -> dict:
    """The shape of one layer's key and value buffers (a cache holds `num_layers` of each)."""
    lead = (batch, cfg.num_kv_heads)
    return {"k": lead + (cfg.head_dim, slots), "v": lead + (slots, cfg.head_dim)}


def cache_slots(cache: dict) -> int:
    return cache["v"][0].shape[2]


def cache_rows(cache: dict) -> int:
    return cache["v"][0].shape[0]


class DecoderBlock(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, rngs, param_dtype, dtype, rules, stack=None):
        d, h, k, hd, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
        kw = dict(rngs=rngs, param_dtype=param_dtype, dtype=dtype, stack=stack)
        self.rules = rules
        self.scale = hd ** -0.5
        self.act = cfg.hidden_act
        self.input_norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype=param_dtype, dtype=dtype, stack=stack)
        self.q = Dense((d,), (h, hd), ("embed", "heads", "head_dim"), bias=cfg.attention_bias, **kw)
        self.k = Dense((d,), (k, hd), ("embed", "kv_heads", "head_dim"), bias=cfg.attention_bias, **kw)
        self.v = Dense((d,), (k, hd), ("embed", "kv_heads", "head_dim"), bias=cfg.attention_bias, **kw)
        self.o = Dense((h, hd), (d,), ("heads", "head_dim", "embed"), bias=cfg.attention_bias, **kw)
        self.post_norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype=param_dtype, dtype=dtype, stack=stack)
        self.gate = Dense((d,), (f,), ("embed", "mlp"), bias=cfg.mlp_bias, **kw)
        self.up = Dense((d,), (f,), ("embed", "mlp"), bias=cfg.mlp_bias, **kw)
        self.down = Dense((f,), (d,), ("mlp", "embed"), bias=cfg.mlp_bias, **kw)

    def _attend(self, x, ctx, cache, keep=None):
        """Self-attention of x; with `keep` [B, K], only the queries at those positions
        (keys and values still come from every position)."""
        k = rope_lib.apply_rotary(self.k(x), ctx["cos"], ctx["sin"])
        v = self.v(x)
        xq, cos, sin, mask = x, ctx["cos"], ctx["sin"], ctx["mask"]
        if keep is not None:
            xq, cos, sin, mask = (take_positions(a, keep) for a in (x, cos, sin, mask))
        q = rope_lib.apply_rotary(self.q(xq), cos, sin)
        q = constrain(q, ("batch", "length", "heads", "head_dim"), self.rules)
        if cache is not None:  # this layer's (keys, values)
            k_cache, v_cache = cache
            rows = jnp.arange(x.shape[0])[:, None]
            # Indices split by slices put the indexed axes first: [B, T, K, H], as k and v are.
            k_cache = k_cache.at[rows, :, :, ctx["positions"]].set(k.astype(k_cache.dtype))
            v_cache = v_cache.at[rows, :, ctx["positions"]].set(v.astype(v_cache.dtype))
            out = cached_attention(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype), mask, self.scale)
            return self.o(out), (k_cache, v_cache)
        out = attention(q, k, v, mask, self.scale, causal=keep is None)
        return self.o(out), None

    def __call__(self, x, ctx, cache=None, keep=None):
        """The block's output [B, T, D], or with `keep` [B, K] only at those positions
        [B, K, D]: the same values, without the queries, output projection and MLP
        work of the positions left out. `cache`: this layer's (keys, values), returned
        with the new positions' slots written."""
        attn, cache = self._attend(self.input_norm(x), ctx, cache, keep)
        if keep is not None:
            x = take_positions(x, keep)
        x = constrain(x + attn, BATCH_LENGTH_EMBED, self.rules)
        h = self.post_norm(x)
        hidden = activation(self.act)(self.gate(h)) * self.up(h)
        hidden = constrain(hidden, ("batch", "length", "mlp"), self.rules)
        x = constrain(x + self.down(hidden), BATCH_LENGTH_EMBED, self.rules)
        return x, cache

    def scan_step(self, carry, _):
        x, ctx = carry
        x, _ = self(x, ctx)
        return (x, ctx), None



class Decoder(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
                 dtype=jnp.float32, remat: bool = False, unroll: bool = False, rules=None):
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        self.unroll = unroll
        self.rules = rules
        self.embed = normal_param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), param_dtype)
        self.layers = DecoderBlock(cfg, rngs=rngs, param_dtype=param_dtype, dtype=dtype, rules=rules,
                                   stack=cfg.num_layers)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype, dtype=dtype)
        self.lm_head = None if cfg.tie_word_embeddings else Dense(
            (cfg.hidden_size,), (cfg.vocab_size,), ("embed", "vocab"), bias=False, rngs=rngs,
            param_dtype=param_dtype, dtype=dtype)

    def embed_tokens(self, ids_bt: jax.Array) -> jax.Array:
        out = jnp.take(self.embed[...], ids_bt, axis=0).astype(self.dtype)
        return constrain(out, BATCH_LENGTH_EMBED, self.rules)

    def init_cache(self, batch: int, slots: int, dtype=None) -> dict:
        cfg = self.cfg
        dtype = dtype or self.dtype
        return {name: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
                for name, shape in cache_shapes(cfg, batch, slots).items()}

    def __call__(self, x_btd: jax.Array, positions_bt: jax.Array,
                 attention_mask_bt: Optional[jax.Array] = None, cache: Optional[dict] = None,
                 keep_bk: Optional[jax.Array] = None):
        """Final hidden states [B, T, D] (normed) and the updated cache (or None).

        Without a cache, token t attends to tokens s <= t whose attention_mask is 1.
        With a cache, token at position p attends to cache slots <= p.
        `keep_bk` [B, K] (no cache): the hidden states only at those positions,
        [B, K, D]. Only the keys and values of the last block need every position,
        so it runs its queries, output projection and MLP at the kept ones alone:
        the training loss needs the positions that predict a target (train/targets.py).
        """
        cfg = self.cfg
        cos, sin = rope_lib.rotary_tables(cfg.rope, cfg.head_dim, cfg.max_position_embeddings, positions_bt)
        if cache is None:
            t = x_btd.shape[1]
            mask = jnp.tril(jnp.ones((t, t), bool))[None]
            if attention_mask_bt is not None:
                mask = mask & attention_mask_bt.astype(bool)[:, None, :]
        else:
            slots = cache_slots(cache)
            mask = jnp.arange(slots)[None, None, :] <= positions_bt[:, :, None]
        ctx = {"cos": cos, "sin": sin, "mask": mask, "positions": positions_bt}
        if cache is not None and keep_bk is not None:
            raise ValueError("keep_bk is for the training forward; decoding with a cache keeps every position")
        if cache is not None:
            x, keys, values = x_btd, [], []
            for i in range(cfg.num_layers):
                kv = (cache["k"][i], cache["v"][i])
                if isinstance(self.layers, nnx.List):  # unstacked for serving: no per-step weight slices
                    x, (k, v) = self.layers[i](x, ctx, kv)
                else:
                    x, (k, v) = call_layer(self.layers, i, x, ctx, kv, remat=self.remat)
                keys.append(k)
                values.append(v)
            return self.norm(x), {"k": tuple(keys), "v": tuple(values)}
        if isinstance(self.layers, nnx.List):
            raise ValueError("a decoder with unstacked layers (with_unstacked_layers) only decodes with a KV cache")
        if keep_bk is None:
            (x, _), _ = scan_layers(self.layers, (x_btd, ctx), remat=self.remat, unroll=self.unroll)
            return self.norm(x), None
        last = cfg.num_layers - 1
        (x, _), _ = scan_layers(self.layers, (x_btd, ctx), None, remat=self.remat, unroll=self.unroll,
                                num_layers=last)
        x, _ = call_layer(self.layers, last, x, ctx, None, keep_bk, remat=self.remat)
        return self.norm(x), None

    def unstack_layers(self) -> None:
        """Make this decoder's layers separate blocks, each with its own parameters (a copy,
        sliced from the stack once). XLA:CPU otherwise copies every layer's weights out of the
        stack on every decode step (3 of 21 ms at batch 128). Cached passes only."""
        if isinstance(self.layers, nnx.List):
            return
        graphdef, state = nnx.split(self.layers)
        self.layers = nnx.List([nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
                                for i in range(self.cfg.num_layers)])

    def logits(self, hidden_btd: jax.Array) -> jax.Array:
        """float32 logits [B, T, vocab]."""
        b, t, d = hidden_btd.shape
        h_nd = hidden_btd.reshape(b * t, d)  # one 2-D matmul: see Dense
        if self.lm_head is None:  # tied: contract with the [vocab, embed] table
            w, contract = self.embed[...].astype(self.dtype), 1
        else:
            w, contract = self.lm_head.kernel[...].astype(self.dtype), 0
        out = jax.lax.dot_general(h_nd, w, (((1,), (contract,)), ((), ())), preferred_element_type=jnp.float32)
        return constrain(out.reshape(b, t, -1), ("batch", "length", "vocab"), self.rules)
