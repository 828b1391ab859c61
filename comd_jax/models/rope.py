"""Rotary position embeddings with the scaling variants transformers configs carry.

Frequencies are computed the way `transformers.modeling_rope_utils` does; the
variants are a table of constructors keyed by the config's `rope_type`. Static
variants resolve to one inverse-frequency vector at trace time; `dynamic` and
`longrope` depend on the longest position in the call, as in transformers.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from comd_jax.models.config import RopeConfig


def _base_inv_freq(base: float, dim: int) -> np.ndarray:
    return 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))


def _default(rope: RopeConfig, dim: int, max_pos: int):
    return _base_inv_freq(rope.theta, dim), 1.0


def _linear(rope: RopeConfig, dim: int, max_pos: int):
    return _base_inv_freq(rope.theta, dim) / rope.factor, 1.0


def _llama3(rope: RopeConfig, dim: int, max_pos: int):
    inv_freq = _base_inv_freq(rope.theta, dim)
    old_len = rope.original_max_position_embeddings
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled), 1.0


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(rope: RopeConfig, dim: int, max_pos: int):
    base, orig = rope.theta, rope.original_max_position_embeddings
    factor = rope.factor if rope.factor else max_pos / orig
    attention_factor = rope.attention_factor
    if attention_factor is None:
        if rope.mscale and rope.mscale_all_dim:
            attention_factor = _yarn_mscale(factor, rope.mscale) / _yarn_mscale(factor, rope.mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)

    def correction_dim(rotations):
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(rope.beta_fast or 32), correction_dim(rope.beta_slow or 1)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, attention_factor


def _dynamic(rope: RopeConfig, dim: int, max_pos: int):
    # Frequencies depend on the call's length; see `inv_freq_for`.
    return _base_inv_freq(rope.theta, dim), 1.0


def _longrope_attention_factor(rope: RopeConfig, max_pos: int) -> float:
    if rope.attention_factor is not None:
        return rope.attention_factor
    orig = rope.original_max_position_embeddings
    factor = rope.factor if rope.factor else max_pos / orig
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))


def _longrope(rope: RopeConfig, dim: int, max_pos: int):
    shape = np.arange(0, dim, 2, dtype=np.float64) / dim
    short = 1.0 / (np.asarray(rope.short_factor, np.float64) * rope.theta ** shape)
    return short, _longrope_attention_factor(rope, max_pos)


ROPE_TYPES = {
    "default": _default,
    "linear": _linear,
    "llama3": _llama3,
    "yarn": _yarn,
    "dynamic": _dynamic,
    "longrope": _longrope,
}


def static_inv_freq(rope: RopeConfig, dim: int, max_pos: int):
    try:
        build = ROPE_TYPES[rope.type]
    except KeyError:
        raise ValueError(f"unsupported rope type {rope.type!r}; supported: {sorted(ROPE_TYPES)}") from None
    return build(rope, dim, max_pos)


def inv_freq_for(rope: RopeConfig, dim: int, max_pos: int, positions: jax.Array):
    """Inverse frequencies for this call, and the cos/sin scale."""
    inv_freq, scale = static_inv_freq(rope, dim, max_pos)
    inv_freq = jnp.asarray(inv_freq, jnp.float32)
    if rope.type == "dynamic":
        seq_len = jnp.maximum(jnp.max(positions) + 1, max_pos).astype(jnp.float32)
        base = rope.theta * ((rope.factor * seq_len / max_pos) - (rope.factor - 1)) ** (dim / (dim - 2))
        inv_freq = 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    elif rope.type == "longrope":
        shape = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
        long = 1.0 / (jnp.asarray(rope.long_factor, jnp.float32) * rope.theta ** shape)
        use_long = jnp.max(positions) + 1 > rope.original_max_position_embeddings
        inv_freq = jnp.where(use_long, long, inv_freq)
    return inv_freq, scale


def rotary_tables(rope: RopeConfig, dim: int, max_pos: int, positions_bt: jax.Array):
    """cos, sin of shape [B, T, dim] (halves repeated, transformers' rotate_half layout)."""
    inv_freq, scale = inv_freq_for(rope, dim, max_pos, positions_bt)
    angles = positions_bt.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles) * scale, jnp.sin(angles) * scale


def apply_rotary(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
    half = x_btnh.shape[-1] // 2
    rotated = jnp.concatenate([-x_btnh[..., half:], x_btnh[..., :half]], axis=-1)
    cos, sin = cos_bth[:, :, None, :], sin_bth[:, :, None, :]
    out = x_btnh.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin
    return out.astype(x_btnh.dtype)
