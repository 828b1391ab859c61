"""CLIP-style vision transformer (patch embedding, class token, learned positions,
pre-layernorm, quick-GELU MLP) returning the hidden states of any layer."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from comd_jax.models.config import VisionConfig
from comd_jax.models.layers import Dense, LayerNorm, activation, attention, constrain, normal_param, scan_layers


class VisionBlock(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs, param_dtype, dtype, rules, stack=None):
        d, h, hd, f = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size
        kw = dict(rngs=rngs, param_dtype=param_dtype, dtype=dtype, stack=stack, bias=True)
        norm_kw = dict(param_dtype=param_dtype, dtype=dtype, stack=stack)
        self.rules = rules
        self.scale = hd ** -0.5
        self.act = cfg.hidden_act
        self.norm1 = LayerNorm(d, cfg.layer_norm_eps, **norm_kw)
        self.q = Dense((d,), (h, hd), ("embed", "heads", "head_dim"), **kw)
        self.k = Dense((d,), (h, hd), ("embed", "heads", "head_dim"), **kw)
        self.v = Dense((d,), (h, hd), ("embed", "heads", "head_dim"), **kw)
        self.o = Dense((h, hd), (d,), ("heads", "head_dim", "embed"), **kw)
        self.norm2 = LayerNorm(d, cfg.layer_norm_eps, **norm_kw)
        self.fc1 = Dense((d,), (f,), ("embed", "mlp"), **kw)
        self.fc2 = Dense((f,), (d,), ("mlp", "embed"), **kw)

    def scan_step(self, x, _):
        h = self.norm1(x)
        x = x + self.o(attention(self.q(h), self.k(h), self.v(h), None, self.scale))
        x = constrain(x, ("batch", "length", "embed"), self.rules)
        hidden = activation(self.act)(self.fc1(self.norm2(x)))
        x = x + self.fc2(constrain(hidden, ("batch", "length", "mlp"), self.rules))
        return constrain(x, ("batch", "length", "embed"), self.rules), None


class VisionTower(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
                 dtype=jnp.float32, remat: bool = False, unroll: bool = False, rules=None):
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        self.unroll = unroll
        patch_dim = cfg.patch_size * cfg.patch_size * cfg.num_channels
        # Patch embedding as a matmul over (row, col, channel)-flattened patches:
        # the same map as CLIP's stride-p convolution, without the convolution.
        self.patch_embed = normal_param(rngs, (patch_dim, cfg.hidden_size), ("patch", "embed"), param_dtype)
        self.class_embed = normal_param(rngs, (cfg.hidden_size,), ("norm",), param_dtype)
        self.position_embed = normal_param(rngs, (cfg.num_patches + 1, cfg.hidden_size),
                                           ("positions", "embed"), param_dtype)
        self.pre_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=param_dtype, dtype=dtype)
        self.layers = VisionBlock(cfg, rngs=rngs, param_dtype=param_dtype, dtype=dtype, rules=rules,
                                  stack=cfg.num_layers)
        # Unused by LLaVA's feature selection; kept so checkpoints round-trip.
        self.post_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, param_dtype=param_dtype, dtype=dtype)

    def patchify(self, pixels_nhwc: jax.Array) -> jax.Array:
        n, h, w, c = pixels_nhwc.shape
        p = self.cfg.patch_size
        x = pixels_nhwc.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def embeddings(self, pixels_nhwc: jax.Array) -> jax.Array:
        cfg = self.cfg
        if pixels_nhwc.shape[1:] != (cfg.image_size, cfg.image_size, cfg.num_channels):
            raise ValueError(f"vision tower expects images of shape "
                             f"{(cfg.image_size, cfg.image_size, cfg.num_channels)} (NHWC), "
                             f"got {tuple(pixels_nhwc.shape)}")
        patches = self.patchify(pixels_nhwc.astype(self.dtype))
        x = patches @ self.patch_embed[...].astype(self.dtype)
        cls = jnp.broadcast_to(self.class_embed[...].astype(self.dtype), (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embed[...].astype(self.dtype)
        return self.pre_norm(x)

    def hidden_state(self, pixels_nhwc: jax.Array, depth: int) -> jax.Array:
        """transformers' `hidden_states[depth]`: 0 is the embeddings, i the output of layer i."""
        x = self.embeddings(pixels_nhwc)
        if depth == 0:
            return x
        x, _ = scan_layers(self.layers, x, remat=self.remat, num_layers=depth, unroll=self.unroll)
        return x
