"""The student's starting weights: `config.init_from` (a transformers-format
directory) and `config.init_vision_from` (a CLIP directory for a plain LLM).

The paper preset freezes the vision tower and the LLM in stage 1, so starting
it from random weights would train a projector between two noise generators:
`config.init_required` turns an empty `init_from` into an error that says so.
"""
from __future__ import annotations

import dataclasses
import json
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
    path = config.init_from or ""
    vision = config.init_vision_from or ""
    if not path:
        if config.init_required:
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


# What a LLaVA checkpoint's config.json decides besides the two towers (a plain LLM has none of them).
_FROM_CHECKPOINT = ("image_token_id", "projector", "feature_layer", "select_strategy")


def checkpoint_architecture(config) -> VLMConfig:
    """The student's architecture as `config.init_from`'s config.json (and `init_vision_from`'s, for
    a plain Llama/Vicuna) says it is."""
    from comd_jax.convert import hf_config

    def read(field):
        path = config[field]
        _check_dir(field, path)
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f)

    overrides = {}
    if config.init_vision_from:
        vision = hf_config.vision_config_of(read("init_vision_from"))
        if vision is None:
            raise ValueError(f"config.init_vision_from={config.init_vision_from!r}: not a CLIP checkpoint")
        overrides["vision"] = hf_config.vision_from_hf(vision)
    main = read("init_from")
    if main.get("model_type") != "llava":  # a plain LLM: the placeholder id and projector are the config's
        overrides.update({k: config.model[k] for k in _FROM_CHECKPOINT})
    return hf_config.vlm_from_hf(main, **overrides)


def _section(value):
    """A config value as the ConfigDict holds it (dataclasses as dicts, tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value))


def adopt_architecture(config, user_set=()) -> list:
    """With `config.init_from`, `config.model`'s towers (text, vision) and its LLaVA fields come from
    the checkpoint, so a preset's sizes never fight the user's checkpoint. A field the user set
    (`user_set`: the dotted names of the command line's overrides, e.g. "model.text.hidden_size")
    that disagrees is an error naming both values. Returns the fields that changed."""
    path = config.init_from or ""
    if not path or "://" in path:  # an object store: the loader's own check compares later
        return []
    theirs = checkpoint_architecture(config)
    wanted = {"text": _section(theirs.text), **({"vision": _section(theirs.vision)} if theirs.vision else {}),
              **{k: getattr(theirs, k) for k in _FROM_CHECKPOINT}}

    def leaves(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from leaves(f"{prefix}.{k}", v)
        else:
            yield prefix, value

    theirs_flat = dict(p for key, value in wanted.items() for p in leaves(f"model.{key}", value))
    clashes = [f"{name}: {_section(value)!r} (command line) vs {theirs_flat[name]!r} ({path}/config.json)"
               for name, value in dict(user_set).items() if name in theirs_flat
               and _section(value) != theirs_flat[name]]
    if clashes:
        raise ValueError(f"config.init_from={path!r}: the architecture comes from the checkpoint, and these "
                         "overrides disagree with it:\n  " + "\n  ".join(clashes))
    from comd_jax import config as config_lib

    before = config_lib.model_config(config.model)
    import ml_collections

    with config.unlocked():
        for key, value in wanted.items():
            config.model[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    after = config_lib.model_config(config.model)
    changed = _differences("model.text", after.text, before.text) + \
        _differences("model.vision", after.vision, before.vision) + \
        [f"model.{k}: {getattr(before, k)} (config) vs {getattr(after, k)} (checkpoint)"
         for k in _FROM_CHECKPOINT if getattr(before, k) != getattr(after, k)]
    return changed
