"""LoRA adapters alone on disk: `save_lora` / `load_lora`, in PEFT's file layout.

`adapter_model.safetensors` holds, per adapted layer, `...<module>.lora_A.weight`
[r, in] and `...lora_B.weight` [out, r] under PEFT's `base_model.model.` prefix
and transformers 5's module names (`model.language_model.layers.{i}...` for
LLaVA, `model.layers.{i}...` for Llama); `adapter_config.json` carries r,
lora_alpha and a `target_modules` regex that matches only the language model
(a bare `q_proj` would also catch the CLIP tower's). PEFT's update is
W + (lora_alpha / r) · B A, the same as ours.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import numpy as np
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from comd_jax import sharding as shd
from comd_jax.convert import layouts
from comd_jax.models import build, lora

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
PEFT_PREFIX = "base_model.model."


def _text_prefix(cfg) -> str:
    """Where the decoder layers sit in transformers 5's module tree."""
    return "model.language_model." if cfg.vision is not None else "model."


def _modules(cfg) -> dict:
    """Our target name (q, ..., down) → transformers module template 'layers.{i}.self_attn.q_proj'."""
    out = {}
    for entry in layouts.text_entries(cfg.text):
        if entry.path[:2] == ("text", "layers") and entry.path[-1] == "kernel":
            out[entry.path[2]] = entry.name[:-len(".weight")]
    return out


def _host(x) -> np.ndarray:
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def save_lora(model, directory: str) -> None:
    """Write the adapters of a LoRA model (and nothing else) to `directory`."""
    cfg = model.cfg
    if not cfg.lora_rank:
        raise ValueError("the model has no LoRA adapters (lora_rank=0)")
    modules, prefix, r = _modules(cfg), _text_prefix(cfg), cfg.lora_rank
    layers = nnx.state(model).to_pure_dict()["text"]["layers"]
    tensors = {}
    for target in cfg.lora_targets:
        a, b = _host(layers[target]["lora_a"]), _host(layers[target]["lora_b"])
        for i in range(a.shape[0]):
            name = PEFT_PREFIX + prefix + modules[target].format(i=i)
            tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(a[i].reshape(-1, r).T)
            tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(b[i].reshape(r, -1).T)
    if jax.process_index() != 0:
        return
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, WEIGHTS), metadata={"format": "pt"})
    suffixes = "|".join(re.escape(modules[t].split("}.", 1)[1]) for t in cfg.lora_targets)
    config = dict(peft_type="LORA", task_type="CAUSAL_LM", r=r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                  bias="none", fan_in_fan_out=False, use_rslora=False, inference_mode=True,
                  target_modules=rf"{re.escape(prefix)}layers\.\d+\.({suffixes})")
    with open(os.path.join(directory, CONFIG), "w") as f:
        json.dump(config, f, indent=2)


def _targets_of(tensors: dict, modules: dict) -> tuple:
    suffix = {template.split("}.", 1)[1]: ours for ours, template in modules.items()}
    found = {suffix[m.group(1)] for k in tensors if (m := re.search(r"layers\.\d+\.(.+)\.lora_A\.weight$", k))
             and m.group(1) in suffix}
    return tuple(t for t in modules if t in found)


def load_lora(model, directory: str):
    """`model` (its base weights; any adapters it has are replaced) with the adapters
    saved in `directory`. Rank, alpha and targets come from the files."""
    with open(os.path.join(directory, CONFIG)) as f:
        config = json.load(f)
    if config.get("use_rslora") or config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{directory}: only plain LoRA adapters are supported, got {config}")
    with safe_open(os.path.join(directory, WEIGHTS), "np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    base_cfg = model.cfg
    modules, prefix = _modules(base_cfg), PEFT_PREFIX + _text_prefix(base_cfg)
    cfg = dataclasses.replace(base_cfg, lora_rank=int(config["r"]), lora_alpha=float(config["lora_alpha"]),
                              lora_targets=_targets_of(tensors, modules))
    graphdef, abstract = build.abstract_model(cfg, model.rules)
    flat_abstract = flatten_dict(abstract.to_pure_dict())
    shardings = flatten_dict(build.param_shardings(abstract, _mesh_of(model), model.rules))
    params = {p: v for p, v in flatten_dict(nnx.state(model).to_pure_dict()).items() if not lora.is_adapter(p)}
    used = set()
    for target in cfg.lora_targets:
        for key, ours in (("lora_A", "lora_a"), ("lora_B", "lora_b")):
            path = ("text", "layers", target, ours)
            shape = flat_abstract[path].shape
            names = [f"{prefix}{modules[target].format(i=i)}.{key}.weight" for i in range(shape[0])]
            missing = [n for n in names if n not in tensors]
            if missing:
                raise KeyError(f"{directory}: missing adapter tensors {missing[:4]}")
            used.update(names)
            expected = _file_shape(key, shape[1:])
            wrong = [(n, tensors[n].shape) for n in names if tensors[n].shape != expected]
            if wrong:
                raise ValueError(f"{directory}: {wrong[0][0]} has shape {wrong[0][1]}, expected {expected}")
            stacked = np.stack([tensors[n].T.reshape(shape[1:]) for n in names])
            params[path] = jax.device_put(stacked.astype(flat_abstract[path].dtype), shardings[path])
    unknown = sorted(set(tensors) - used)
    if unknown:
        raise ValueError(f"{directory}: adapter tensors we do not place: {unknown[:8]}")
    return build.merge(graphdef, abstract, unflatten_dict(params))


def _file_shape(key: str, ours: tuple) -> tuple:
    """lora_A [r, in] for our [in..., r]; lora_B [out, r] for our [r, out...]."""
    if key == "lora_A":
        return (ours[-1], int(np.prod(ours[:-1])))
    return (int(np.prod(ours[1:])), ours[0])


def _mesh_of(model):
    """The mesh the model's parameters live on (a one-device mesh for plain arrays)."""
    for x in jax.tree.leaves(nnx.state(model)):
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
        if sharding is not None:
            return shd.make_mesh((1, 1, 1), list(sharding.device_set)[:1])
    return shd.make_mesh((1, 1, 1), jax.devices()[:1])
