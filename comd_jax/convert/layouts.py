"""Where each of our parameters lives in the transformers checkpoint layouts.

Our paths are keys of `nnx.state(model).to_pure_dict()`; transformers names are
given relative to a part's prefix, which is detected per checkpoint from a table
of known layouts (llava-hf, transformers 5, plain Llama/Vicuna, CLIP, the
original LLaVA release).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

# -- tensor transforms: transformers layout ⇄ ours ------------------------------


def dense_in(w: np.ndarray, shape) -> np.ndarray:
    """torch Linear weight [out, in] → our kernel [in dims..., out dims...]."""
    return w.T.reshape(shape)


def dense_out(k: np.ndarray, n_in: int) -> np.ndarray:
    rows = int(np.prod(k.shape[:n_in]))
    return k.reshape(rows, -1).T


def patch_in(w: np.ndarray, shape) -> np.ndarray:
    """Conv weight [D, C, kh, kw] → patch matmul [kh*kw*C, D] ((row, col, channel) order)."""
    return w.transpose(2, 3, 1, 0).reshape(shape)


def patch_out(k: np.ndarray, channels: int) -> np.ndarray:
    d = k.shape[-1]
    p = int(round((k.shape[0] // channels) ** 0.5))
    return k.reshape(p, p, channels, d).transpose(3, 2, 0, 1)


@dataclasses.dataclass(frozen=True)
class Entry:
    path: tuple  # our path
    name: str  # transformers name relative to the part prefix; '{i}' for a layer index
    kind: str  # 'copy' | 'dense' | 'bias' (flattened) | 'patch'
    n_in: int = 1  # leading input dims of a dense kernel


def _dense(path, name, n_in=1):
    return [Entry(path + ("kernel",), name + ".weight", "dense", n_in)]


def _dense_bias(path, name, n_in=1):
    return _dense(path, name, n_in) + [Entry(path + ("bias",), name + ".bias", "bias")]


def text_entries(cfg) -> list:
    t = ("text", "layers")
    attn_bias, mlp_bias = cfg.attention_bias, cfg.mlp_bias
    lin = lambda p, n, bias, n_in=1: (_dense_bias if bias else _dense)(t + (p,), f"layers.{{i}}.{n}", n_in)
    out = [Entry(("text", "embed"), "embed_tokens.weight", "copy"),
           Entry(t + ("input_norm", "weight"), "layers.{i}.input_layernorm.weight", "copy"),
           Entry(t + ("post_norm", "weight"), "layers.{i}.post_attention_layernorm.weight", "copy"),
           Entry(("text", "norm", "weight"), "norm.weight", "copy")]
    for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
        out += lin(ours, f"self_attn.{theirs}", attn_bias)
    out += lin("o", "self_attn.o_proj", attn_bias, n_in=2)
    for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
        out += lin(ours, f"mlp.{theirs}", mlp_bias)
    return out


def vision_entries() -> list:
    v, t = ("vision",), ("vision", "layers")
    out = [Entry(v + ("patch_embed",), "embeddings.patch_embedding.weight", "patch"),
           Entry(v + ("class_embed",), "embeddings.class_embedding", "copy"),
           Entry(v + ("position_embed",), "embeddings.position_embedding.weight", "copy")]
    for ours, theirs in (("pre_norm", "pre_layrnorm"), ("post_norm", "post_layernorm")):
        out += [Entry(v + (ours, "weight"), f"{theirs}.weight", "copy"),
                Entry(v + (ours, "bias"), f"{theirs}.bias", "copy")]
    for ours, theirs in (("norm1", "layer_norm1"), ("norm2", "layer_norm2")):
        out += [Entry(t + (ours, "weight"), f"encoder.layers.{{i}}.{theirs}.weight", "copy"),
                Entry(t + (ours, "bias"), f"encoder.layers.{{i}}.{theirs}.bias", "copy")]
    for ours, theirs, n_in in (("q", "self_attn.q_proj", 1), ("k", "self_attn.k_proj", 1),
                               ("v", "self_attn.v_proj", 1), ("o", "self_attn.out_proj", 2),
                               ("fc1", "mlp.fc1", 1), ("fc2", "mlp.fc2", 1)):
        out += _dense_bias(t + (ours,), f"encoder.layers.{{i}}.{theirs}", n_in)
    return out


def projector_entries(depth: int, bias: bool, naming: str) -> list:
    out = []
    for j in range(depth):
        name = PROJECTOR_NAMING[naming](j, depth)
        out += (_dense_bias if bias else _dense)(("projector", "layers", j), name)
    return out


# Projector layer j of `depth` under each naming scheme (relative to its prefix).
PROJECTOR_NAMING = {
    "llava_hf": lambda j, depth: f"linear_{j + 1}",
    "original": lambda j, depth: "" if depth == 1 else f"{2 * j}",  # nn.Sequential(Linear, GELU, ...)
}


@dataclasses.dataclass(frozen=True)
class Part:
    probe: str  # a name every checkpoint of this part has, relative to the prefix
    prefixes: tuple  # candidates, most specific first


TEXT = Part("embed_tokens.weight", ("language_model.model.", "model.language_model.", "model.", ""))
LM_HEAD_KEYS = ("language_model.lm_head.weight", "lm_head.weight", "model.lm_head.weight")
VISION = Part("embeddings.patch_embedding.weight",
              ("vision_tower.vision_model.", "model.vision_tower.vision_model.",
               "model.vision_tower.vision_tower.vision_model.",  # original release, tower included
               "model.vision_tower.",
               "vision_tower.", "vision_model.", ""))
PROJECTOR = {
    "llava_hf": ("multi_modal_projector.", "model.multi_modal_projector."),
    "original": ("model.mm_projector.",),
}

# Keys that checkpoints carry but no LLaVA model needs (CLIP text half, buffers).
IGNORED_PREFIXES = ("text_model.", "logit_scale", "visual_projection.", "text_projection.")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "position_ids")


def find_prefix(part: Part, keys) -> Optional[str]:
    for prefix in part.prefixes:
        if prefix + part.probe in keys:
            return prefix
    return None


def find_projector(keys, depth: int) -> Optional[tuple]:
    for naming, prefixes in PROJECTOR.items():
        for prefix in prefixes:
            first = PROJECTOR_NAMING[naming](0, depth)
            name = prefix + (f"{first}." if first else "") + "weight"
            if name in keys:
                return naming, prefix
    return None


def is_ignored(key: str) -> bool:
    return key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES)


def full_name(prefix: str, name: str) -> str:
    # The original release's linear projector has no sub-name ('model.mm_projector.weight').
    return (prefix + name).replace("..", ".")
