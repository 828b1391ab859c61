"""The student's starting weights: `config.init_from` (a transformers-format
directory) and `config.init_vision_from` (a CLIP directory for a plain LLM).

The paper preset freezes the vision tower and the LLM in stage 1, so starting
it from random weights would train a projector between two noise generators:
`config.init_required` turns an empty `init_from` into an error that says so.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

from flax import nnx

from comd_jax.models.config import VLMConfig

# VLMConfig fields the experiment config decides even when the checkpoint says otherwise:
# how to compute and train, and how to attach a separate vision tower.
_OVERRIDES = ("image_token_id", "projector", "feature_layer", "select_strategy", "dtype", "param_dtype",
              "remat", "unroll_layers", "lora_rank", "lora_alpha", "lora_targets")


def _check_dir(field: str, path: str) -> None:
    if "://" not in path and not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"config.{field}={path!r}: no config.json there (expected a transformers-format "
                                "checkpoint directory)")


def _differences(prefix: str, theirs, ours) -> list:
    """Fields where the checkpoint's config and ours disagree, as 'model.text.vocab_size: 32064 vs 32000'."""
    if theirs is None or ours is None:
        return [] if theirs is ours else [f"{prefix}: {ours} vs {theirs}"]
    return [f"{prefix}.{f.name}: {getattr(ours, f.name)} (config) vs {getattr(theirs, f.name)} (checkpoint)"
            for f in dataclasses.fields(ours) if getattr(ours, f.name) != getattr(theirs, f.name)]


def student_params(config, model_cfg: VLMConfig, mesh, recipe: str) -> Optional[dict]:
    """Parameters from `config.init_from` placed on `mesh`, or None (random init) when it is empty."""
    path = config.get("init_from", "") or ""
    vision = config.get("init_vision_from", "") or ""
    if not path:
        if config.get("init_required", False):
            raise ValueError("config.init_from: set the pretrained student (a transformers-format LLaVA "
                             "directory, or a Vicuna/Llama directory plus config.init_vision_from=<CLIP "
                             "directory>); this preset freezes the backbones, so random weights would be useless")
        return None
    _check_dir("init_from", path)
    if vision:
        _check_dir("init_vision_from", vision)
    from comd_jax.convert.hf import load_pretrained

    overrides = {k: getattr(model_cfg, k) for k in _OVERRIDES}
    model = load_pretrained(path, mesh, vision_tower=vision or None, recipe=recipe, seed=config.seed,
                            **overrides)
    # Every architecture field must agree: a different eps or rope base loads without a shape error
    # and silently changes the model.
    bad = _differences("model.text", model.cfg.text, model_cfg.text) + \
        _differences("model.vision", model.cfg.vision, model_cfg.vision)
    if bad:
        raise ValueError(f"config.init_from={path!r} does not match config.model; set these to the "
                         "checkpoint's values:\n  " + "\n  ".join(bad))
    return nnx.state(model).to_pure_dict()
