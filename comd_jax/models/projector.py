"""LLaVA projectors: `linear` and `mlp{N}x_gelu` (LLaVA-1.5 uses mlp2x_gelu)."""
from __future__ import annotations

import jax
from flax import nnx

from comd_jax.models.config import projector_depth
from comd_jax.models.layers import Dense, activation

_LIST = getattr(nnx, "List", list)  # flax < 0.12 tracks plain lists


class Projector(nnx.Module):
    def __init__(self, kind: str, in_dim: int, out_dim: int, *, bias: bool = True, act: str = "gelu",
                 rngs: nnx.Rngs, param_dtype, dtype):
        depth = projector_depth(kind)
        self.act = act
        # The last layer's axes are swapped so a square kernel never names one axis twice.
        dims = [in_dim] + [out_dim] * depth
        self.layers = _LIST([
            Dense((dims[i],), (dims[i + 1],), ("mlp", "embed") if i == depth - 1 else ("embed", "mlp"),
                  bias=bias, rngs=rngs, param_dtype=param_dtype, dtype=dtype)
            for i in range(depth)
        ])

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            if i:
                x = activation(self.act)(x)
            x = layer(x)
        return x
