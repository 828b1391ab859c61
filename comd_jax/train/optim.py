"""Optimizer, schedule and trainable-part labels.

Which parameters train is decided by path labels (big_vision style): a path
like 'text/layers/q/kernel' is 'train' when it matches one of the config's
regexes, else 'frozen'. `optax.multi_transform` gives frozen leaves no
optimizer state and no update, so stage 1 (projector only) and instruction
tuning (projector + LLM) share one train step.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import jax
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

TRAIN, FROZEN = "train", "frozen"

# Weight decay applies to matrices and embeddings, not to norms and biases. LoRA
# factors are matrices too (as in transformers' Trainer, which LLaVA's LoRA runs use).
_DECAYED = ("kernel", "embed", "patch_embed", "position_embed", "lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.03
    total_steps: int = 1000
    schedule: str = "cosine"  # cosine | constant | linear
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0
    trainable: Sequence[str] = ("projector/.*", "text/.*")

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {sorted(SCHEDULES)}")
        if not self.trainable:
            raise ValueError("OptimConfig.trainable is empty: nothing would train")
        for pattern in self.trainable:
            re.compile(pattern)


def _warmup_then(decay):
    def build(cfg: OptimConfig):
        warmup = int(round(cfg.warmup_ratio * cfg.total_steps))
        after = decay(cfg, max(cfg.total_steps - warmup, 1))
        if warmup == 0:
            return after
        return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup), after], [warmup])
    return build


SCHEDULES = {
    "cosine": _warmup_then(lambda c, n: optax.cosine_decay_schedule(c.learning_rate, n, c.end_lr_ratio)),
    "linear": _warmup_then(lambda c, n: optax.linear_schedule(c.learning_rate, c.learning_rate * c.end_lr_ratio, n)),
    "constant": _warmup_then(lambda c, n: optax.constant_schedule(c.learning_rate)),
}


def schedule(cfg: OptimConfig):
    return SCHEDULES[cfg.schedule](cfg)


def path_name(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def trainable_labels(params: dict, patterns: Sequence[str]) -> dict:
    compiled = [re.compile(p) for p in patterns]
    flat = flatten_dict(params)
    labels = {p: TRAIN if any(c.fullmatch(path_name(p)) for c in compiled) else FROZEN for p in flat}
    if TRAIN not in labels.values():
        raise ValueError(f"no parameter matches the trainable patterns {list(patterns)}; "
                         f"parameter paths look like {path_name(next(iter(flat)))!r}")
    return unflatten_dict(labels)


def decay_mask(params: dict):
    """True for decayed leaves; inside multi_transform frozen leaves arrive as
    MaskedNode and must stay in place."""
    def decide(path, leaf):
        if isinstance(leaf, optax.MaskedNode):
            return leaf
        return getattr(path[-1], "key", None) in _DECAYED

    return jax.tree_util.tree_map_with_path(decide, params,
                                            is_leaf=lambda x: isinstance(x, optax.MaskedNode))


def make_optimizer(cfg: OptimConfig, params: dict):
    """(optax transform, labels). `params` may be abstract (ShapeDtypeStructs)."""
    labels = trainable_labels(params, cfg.trainable)
    inner = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip else optax.identity(),
        optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                    mask=decay_mask),
    )
    tx = optax.multi_transform({TRAIN: inner, FROZEN: optax.set_to_zero()}, labels)
    return tx, labels


def count(params: dict, labels: dict, which: str = TRAIN) -> int:
    flat_p, flat_l = flatten_dict(params), flatten_dict(labels)
    return sum(math.prod(flat_p[k].shape) for k in flat_p if flat_l[k] == which)
