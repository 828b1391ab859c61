"""LoRA adapters on the decoder's linear layers, and folding them back.

A targeted `Dense` becomes a `LoraDense` with the same `kernel`/`bias` (so
parameter paths, checkpoint layouts and shardings of the base model stay as
they were) plus `lora_a` [in dims..., r] and `lora_b` [r, out dims...]:

    y = x W (+ b) + (x A) B · alpha / r

`lora_b` starts at zero, so a fresh adapter leaves the model's function
unchanged; `lora_a` starts uniform in ±1/sqrt(fan_in), the bound of PyTorch's
`kaiming_uniform_(a=sqrt(5))` that PEFT uses by default, so adapters trained
here and there start alike. Adapters are attached after the whole model is
built, so the base parameters draw the same random numbers with or without
LoRA, and with `lora_rank=0` nothing at all changes.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from comd_jax.models.layers import Dense

# The rank dimension's logical name. It is in no sharding rules table on purpose:
# adapters are tiny, so their rank dimension stays replicated.
LORA_AXIS = "lora"
ADAPTER_KEYS = ("lora_a", "lora_b")


class LoraDense(Dense):
    """A `Dense` that adopts an existing layer's parameters and adds a low-rank update."""

    def __init__(self, base: Dense, rank: int, alpha: float, *, rngs: nnx.Rngs):
        # Adopt every public field of the base layer (kernel, bias, n_in, dtype, and
        # whatever a later Dense adds), so Dense.__call__ keeps working unchanged.
        for name, value in vars(base).items():
            if not name.startswith("_"):
                setattr(self, name, value)
        axes = tuple(base.kernel.get_metadata()["logical_axes"])
        shape = base.kernel.shape
        lead = 1 if axes and axes[0] == "layers" else 0  # a scanned stack
        n_in = base.n_in
        in_shape, out_shape = shape[lead:lead + n_in], shape[lead + n_in:]
        in_axes, out_axes = axes[lead:lead + n_in], axes[lead + n_in:]
        dtype = base.kernel.dtype
        bound = 1.0 / math.sqrt(math.prod(in_shape))
        a = jax.random.uniform(rngs.params(), shape[:lead] + in_shape + (rank,), jnp.float32, -bound, bound)
        self.lora_a = nnx.Param(a.astype(dtype), logical_axes=axes[:lead] + in_axes + (LORA_AXIS,))
        self.lora_b = nnx.Param(jnp.zeros(shape[:lead] + (rank,) + out_shape, dtype),
                                logical_axes=axes[:lead] + (LORA_AXIS,) + out_axes)
        self.lora_scale = alpha / rank

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        a = self.lora_a[...].astype(self.dtype)
        b = self.lora_b[...].astype(self.dtype)
        r = a.shape[-1]
        # Plain 2-D matmuls over flattened tokens, as Dense does (XLA:CPU's backward
        # is slow for dots with several batch dims).
        x2 = x.astype(self.dtype).reshape(-1, a.size // r)
        xa = (x2 @ a.reshape(-1, r)) * jnp.asarray(self.lora_scale, self.dtype)  # scale at rank r: cheapest
        delta = (xa @ b.reshape(r, -1)).reshape(y.shape)
        return y + delta.astype(y.dtype)


def add_adapters(block: nnx.Module, cfg, rngs: nnx.Rngs) -> None:
    """Swap `block`'s targeted Dense layers (cfg.lora_targets) for LoraDense in place."""
    for name in cfg.lora_targets:
        layer = getattr(block, name, None)
        if not isinstance(layer, Dense):
            raise ValueError(f"LoRA target {name!r} is not a Dense layer of {type(block).__name__}")
        setattr(block, name, LoraDense(layer, cfg.lora_rank, cfg.lora_alpha, rngs=rngs))


# -- pure-dict helpers (params as in TrainState / `to_pure_dict()`) ---------------


def is_adapter(path: tuple) -> bool:
    return bool(path) and str(path[-1]) in ADAPTER_KEYS


def adapter_params(params: dict) -> dict:
    """Only the adapter leaves (what an adapter checkpoint holds)."""
    return unflatten_dict({p: v for p, v in flatten_dict(params).items() if is_adapter(p)})


def fold(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """kernel + scale · A B, with A [lead..., in..., r] and B [lead..., r, out...].

    The leading (stacked 'layers') dims are whatever the kernel has beyond A's
    input and B's output dims; the product runs in float32.
    """
    lead = a.ndim + b.ndim - 2 - kernel.ndim
    lead_shape, r = kernel.shape[:lead], a.shape[-1]
    a2 = a.astype(jnp.float32).reshape(*lead_shape, -1, r)
    b2 = b.astype(jnp.float32).reshape(*lead_shape, r, -1)
    delta = jnp.matmul(a2, b2).reshape(kernel.shape)
    return (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)


def merge_lora_params(params: dict, cfg) -> dict:
    """Fold every adapter into its kernel and drop the adapter leaves (jit-able)."""
    if not cfg.lora_rank:
        return params
    scale = cfg.lora_alpha / cfg.lora_rank
    flat = dict(flatten_dict(params))
    for path in [p for p in flat if p[-1] == "lora_a"]:
        layer = path[:-1]
        kernel = flat[layer + ("kernel",)]
        flat[layer + ("kernel",)] = fold(kernel, flat.pop(path), flat.pop(layer + ("lora_b",)), scale)
    return unflatten_dict(flat)
