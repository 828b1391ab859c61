"""Loading experiment configs, and the section builders `comd_jax.experiment.validate` uses to
turn the ConfigDict into frozen dataclasses once, at start-up (model, mesh, optimizer). Each
builder takes a section in either form and returns its dataclass; one already built passes.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os

import ml_collections

from comd_jax import configs
from comd_jax.models.config import DecoderConfig, RopeConfig, VisionConfig, VLMConfig
from comd_jax.sharding import MeshConfig
from comd_jax.train.optim import OptimConfig


DEFAULT_CONFIG_FILE = configs.COMD


def load_config_file(spec: str = DEFAULT_CONFIG_FILE) -> ml_collections.ConfigDict:
    """'path/to/file.py[:preset]' -> that file's get_config(preset), as `--config=` reads it.

    For scripts and tests that need an experiment config without absl flags.
    """
    from comd_jax.cli import config_arg

    path, _, arg = config_arg.resolve_value(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location("_experiment_config", path)
    if module_spec is None or not os.path.isfile(path):
        raise FileNotFoundError(f"no config file at {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def preset(name: str) -> ml_collections.ConfigDict:
    """One preset of comd_jax/configs/comd.py (its PRESETS table: default, smoke, paper, teacher, the ablations)."""
    return load_config_file(f"{DEFAULT_CONFIG_FILE}:{name}")


def _fields(cls, section, drop=(), where: str = "") -> dict:
    names = {f.name for f in dataclasses.fields(cls)} - set(drop)
    values = as_dict(section)
    unknown = set(values) - names - set(drop)
    if unknown:
        raise ValueError(f"{where or cls.__name__}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    return {k: v for k, v in values.items() if k in names}


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def as_dict(section) -> dict:
    """A section's keys and values, whichever form it has (ConfigDict, frozen dataclass, dict)."""
    if isinstance(section, ml_collections.ConfigDict):
        return section.to_dict()
    if dataclasses.is_dataclass(section):
        return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
    return dict(section)


def model_config(section, where: str = "config.model") -> VLMConfig:
    """`config.model` (or `config.teacher`) → VLMConfig; one already validated is returned as is."""
    if isinstance(section, VLMConfig):
        return section
    values = as_dict(section)
    text = dict(values.pop("text"))
    rope = RopeConfig(**_tuples(text.pop("rope", {}) or {}))
    fields = _fields(VLMConfig, {**values, "text": None, "vision": None}, where=where)
    vision = values.get("vision")
    fields["text"] = DecoderConfig(rope=rope, **_fields(DecoderConfig, text, drop=("rope",), where=f"{where}.text"))
    fields["vision"] = VisionConfig(**_fields(VisionConfig, vision, where=f"{where}.vision")) if vision else None
    return VLMConfig(**fields)


def mesh_config(section) -> MeshConfig:
    if isinstance(section, MeshConfig):
        return section
    return MeshConfig(**_fields(MeshConfig, section, where="config.mesh"))


def optim_config(section) -> OptimConfig:
    """A training stage section (`config.stage1`, `config.tune`); non-optimizer keys are ignored."""
    values = as_dict(section)
    names = {f.name for f in dataclasses.fields(OptimConfig)}
    return OptimConfig(**_tuples({k: v for k, v in values.items() if k in names}))
