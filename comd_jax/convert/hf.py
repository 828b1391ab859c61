"""Hugging Face interchange: `load_pretrained` and `save_pretrained`.

Reads llava-hf LLaVA, the layout transformers 5 writes, plain Llama/Vicuna,
CLIP (full or vision-only, joined to a language model with a fresh projector)
and the original LLaVA release (Llama + `mm_projector`, CLIP tower separate).
Weights go tensor by tensor straight into their shards, so host memory peaks
near one tensor rather than the whole model.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from comd_jax import sharding as shd
from comd_jax.convert import hf_config, layouts
from comd_jax.convert.tensors import CheckpointReader, ShardedWriter
from comd_jax.models import build, lora
from comd_jax.models.config import VLMConfig, dtype_of, projector_depth
from comd_jax.models.vlm import VLM


def _read_config(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory}: no config.json (expected a transformers-format directory)")
    with open(path) as f:
        return json.load(f)


class _Source:
    """One checkpoint directory and the prefixes its parts live under."""

    def __init__(self, directory: str):
        self.directory = directory
        self.config = _read_config(directory)
        self.reader = CheckpointReader(directory)
        keys = set(self.reader.keys())
        self.text_prefix = layouts.find_prefix(layouts.TEXT, keys)
        self.vision_prefix = layouts.find_prefix(layouts.VISION, keys)
        self.lm_head = next((k for k in layouts.LM_HEAD_KEYS if k in keys), None)
        self.used: set = set()

    def unused(self) -> list:
        return sorted(k for k in self.reader.keys() if k not in self.used and not layouts.is_ignored(k))


def _plan(cfg: VLMConfig, main: _Source, vision: Optional[_Source]):
    """(our path, source, transformers name template, entry) for every checkpoint-backed leaf."""
    if main.text_prefix is None:
        raise ValueError(f"{main.directory}: no language model weights found "
                         f"(looked for '*{layouts.TEXT.probe}' under {layouts.TEXT.prefixes})")
    plan = [(e, main, main.text_prefix) for e in layouts.text_entries(cfg.text)]
    if not cfg.text.tie_word_embeddings:
        if main.lm_head is None:
            raise ValueError(f"{main.directory}: missing key lm_head.weight (untied embeddings); "
                             f"looked for {layouts.LM_HEAD_KEYS}")
        plan.append((layouts.Entry(("text", "lm_head", "kernel"), main.lm_head, "dense"), main, ""))
    fresh_projector = True
    if cfg.vision is not None:
        # A checkpoint that carries its own tower (llava-hf; original-release fine-tunes
        # that trained it) wins; a separate CLIP directory then only gives its config.
        tower = main if main.vision_prefix is not None or vision is None else vision
        if tower.vision_prefix is None:
            raise ValueError(f"{tower.directory}: no vision tower weights found "
                             f"(looked for '*{layouts.VISION.probe}')")
        plan += [(e, tower, tower.vision_prefix) for e in layouts.vision_entries()]
        found = layouts.find_projector(set(main.reader.keys()), projector_depth(cfg.projector))
        if found is not None:
            naming, prefix = found
            fresh_projector = False
            plan += [(e, main, prefix) for e in
                     layouts.projector_entries(projector_depth(cfg.projector), cfg.projector_bias, naming)]
    return plan, fresh_projector


def _expected_hf_shape(entry: layouts.Entry, shape: tuple, channels: int) -> tuple:
    if entry.kind == "dense":
        return (int(np.prod(shape[entry.n_in:])), int(np.prod(shape[:entry.n_in])))
    if entry.kind == "patch":
        p = int(round((shape[0] // channels) ** 0.5))
        return (shape[1], channels, p, p)
    if entry.kind == "bias":
        return (int(np.prod(shape)),)
    return tuple(shape)


def _to_ours(entry: layouts.Entry, tensor: np.ndarray, shape: tuple) -> np.ndarray:
    if entry.kind == "dense":
        return layouts.dense_in(tensor, shape)
    if entry.kind == "patch":
        return layouts.patch_in(tensor, shape)
    return tensor.reshape(shape)


def _read_checked(source: _Source, name: str, entry, shape, channels) -> np.ndarray:
    if name not in source.reader.files:
        raise KeyError(f"{source.directory}: missing key {name!r} (needed for our {'/'.join(map(str, entry.path))} "
                       f"of shape {tuple(shape)})")
    expected = _expected_hf_shape(entry, shape, channels)
    found = source.reader.shape(name)
    if tuple(found) != tuple(expected):
        raise ValueError(f"{source.directory}: key {name!r} has shape {tuple(found)}, "
                         f"expected {tuple(expected)} for our {'/'.join(map(str, entry.path))}")
    source.used.add(name)
    return _to_ours(entry, source.reader.read(name), shape)


def _place(array: np.ndarray, sharding, dtype) -> jax.Array:
    array = array.astype(dtype, copy=False)  # no second host copy when the dtype already matches
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _layer_sharding(sharding: NamedSharding) -> NamedSharding:
    return NamedSharding(sharding.mesh, P(*sharding.spec[1:]))


# Jitted helpers are cached per sharding, so leaves (and loads) of equal shapes share
# one compiled program instead of compiling two per stacked leaf.
@functools.lru_cache(maxsize=None)
def _zeros_in(sharding: NamedSharding):
    return jax.jit(jnp.zeros, static_argnums=(0, 1), out_shardings=sharding)


@functools.lru_cache(maxsize=None)
def _layer_setter(sharding: NamedSharding):
    return jax.jit(lambda full, one, i: jax.lax.dynamic_update_index_in_dim(full, one, i, 0),
                   donate_argnums=0, out_shardings=sharding)


def _load_leaf(entry, source, prefix, abstract_leaf, sharding, dtype, channels) -> jax.Array:
    shape = abstract_leaf.shape
    if "{i}" not in entry.name:
        return _place(_read_checked(source, layouts.full_name(prefix, entry.name), entry, shape, channels),
                      sharding, dtype)
    # A scanned stack: fill one layer at a time into the sharded [layers, ...] array.
    stacked = _zeros_in(sharding)(tuple(shape), dtype)
    layer_sharding = _layer_sharding(sharding)
    set_layer = _layer_setter(sharding)
    for i in range(shape[0]):
        name = layouts.full_name(prefix, entry.name.format(i=i))
        one = _place(_read_checked(source, name, entry, shape[1:], channels), layer_sharding, dtype)
        stacked = set_layer(stacked, one, i)
    return stacked


def load_pretrained(directory: str, mesh=None, *, vision_tower: Optional[str] = None,
                    recipe: str = "fsdp", seed: int = 0, strict: bool = True, **overrides) -> VLM:
    """Load a transformers-format directory into our model, sharded over `mesh`.

    - `directory`: LLaVA (llava-hf or transformers 5 layout), a plain Llama/Vicuna,
      or the original LLaVA release (`llava_llama`, projector included).
    - `vision_tower`: a CLIP directory (CLIPModel or CLIPVisionModel) to attach to a
      language-model-only `directory`; the projector starts fresh unless
      `directory` has one. Then pass `image_token_id=` (and optionally
      `projector=`, `feature_layer=`, `select_strategy=`). When `directory` carries
      tower weights itself (original-release checkpoints that trained the tower),
      those win and the CLIP directory only supplies the vision config.
    - `overrides`: VLMConfig fields, e.g. `param_dtype='bfloat16'`, `dtype='bfloat16'`, `remat=True`;
      `lora_rank=8` (with `lora_alpha=`, `lora_targets=`) adds fresh LoRA adapters to the decoder.
    - `strict`: unknown checkpoint keys are an error (they may mean a layout we misread).
    """
    main = _Source(directory)
    vision = _Source(vision_tower) if vision_tower else None
    kind = main.config.get("model_type")
    if kind == "llava_llama" and vision is None:
        raise ValueError(f"{directory}: the original LLaVA release keeps its vision tower's config apart "
                         f"({main.config.get('mm_vision_tower')!r}); pass vision_tower=<CLIP directory>")
    if vision is not None:
        vision_cfg = hf_config.vision_config_of(vision.config)
        if vision_cfg is None:
            raise ValueError(f"{vision_tower}: config model_type {vision.config.get('model_type')!r} "
                             "is not a CLIP model")
        if "image_token_id" not in overrides and kind != "llava":
            raise ValueError("attaching a vision tower to a language model needs image_token_id=<the "
                             "tokenizer's image placeholder id>")
        overrides.setdefault("vision", hf_config.vision_from_hf(vision_cfg))
    cfg = hf_config.vlm_from_hf(main.config, **overrides)

    mesh = mesh if mesh is not None else shd.make_mesh((1, 1, 1), jax.devices()[:1])
    rules = shd.rules_for(recipe)
    graphdef, abstract = build.abstract_model(cfg, rules)
    flat_abstract = flatten_dict(abstract.to_pure_dict())
    flat_shardings = flatten_dict(build.param_shardings(abstract, mesh, rules))
    plan, fresh_projector = _plan(cfg, main, vision)
    dtype = dtype_of(cfg.param_dtype)
    channels = cfg.vision.num_channels if cfg.vision else 3

    params = {}
    for entry, source, prefix in plan:
        if entry.path not in flat_abstract:
            raise KeyError(f"internal: no parameter {entry.path} in the model")
        params[entry.path] = _load_leaf(entry, source, prefix, flat_abstract[entry.path],
                                        flat_shardings[entry.path], dtype, channels)
    if strict:
        for source in filter(None, (main, vision)):
            if source is vision and not vision.used:
                continue  # config only
            unknown = source.unused()
            if unknown:
                raise ValueError(f"{source.directory}: unknown keys {unknown[:8]}"
                                 f"{' ...' if len(unknown) > 8 else ''} ({len(unknown)} in all); "
                                 "pass strict=False to ignore them")
    # A fresh projector (LLM + separate CLIP) and fresh LoRA adapters (`lora_rank=` override)
    # are initialized; any other missing weight is an error.
    missing = {p for p in flat_abstract if p not in params}
    fresh = {p for p in missing if (fresh_projector and p[0] == "projector") or lora.is_adapter(p)}
    if missing - fresh:
        names = sorted("/".join(map(str, p)) for p in missing - fresh)
        raise KeyError(f"no checkpoint weights for {names}")
    if fresh:
        params.update(flatten_dict(build.init_params(cfg, mesh, rules, seed, keep=lambda p: p in fresh)))
    for source in filter(None, (main, vision)):
        source.reader.close()
    return build.merge(graphdef, abstract, unflatten_dict(params))


# -- export ----------------------------------------------------------------------


def _hf_configs(cfg: VLMConfig):
    import transformers

    text = transformers.LlamaConfig(**{k: v for k, v in hf_config.decoder_to_hf(cfg.text).items()
                                       if k != "model_type"})
    if cfg.vision is None:
        text.architectures = ["LlamaForCausalLM"]
        return text
    if projector_depth(cfg.projector) != 2:
        raise ValueError(f"transformers' LLaVA has a two-layer projector; a {cfg.projector!r} projector "
                         "cannot be exported to it")
    vision = transformers.CLIPVisionConfig(**{k: v for k, v in hf_config.vision_to_hf(cfg.vision).items()
                                              if k != "model_type"})
    llava = transformers.LlavaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=cfg.image_token_id,
        projector_hidden_act=cfg.projector_act, vision_feature_layer=cfg.feature_layer,
        vision_feature_select_strategy=cfg.select_strategy, multimodal_projector_bias=cfg.projector_bias,
        image_seq_length=cfg.vision.num_patches, tie_word_embeddings=cfg.text.tie_word_embeddings)
    llava.architectures = ["LlavaForConditionalGeneration"]
    return llava


def _export_entries(cfg: VLMConfig):
    """(entry, prefix) in the llava-hf layout (plain Llama layout for text-only models)."""
    llava = cfg.vision is not None
    text_prefix = "language_model.model." if llava else "model."
    out = [(e, text_prefix) for e in layouts.text_entries(cfg.text)]
    if not cfg.text.tie_word_embeddings:
        head = "language_model.lm_head.weight" if llava else "lm_head.weight"
        out.append((layouts.Entry(("text", "lm_head", "kernel"), head, "dense"), ""))
    if llava:
        out += [(e, "vision_tower.vision_model.") for e in layouts.vision_entries()]
        out += [(e, "multi_modal_projector.") for e in
                layouts.projector_entries(projector_depth(cfg.projector), cfg.projector_bias, "llava_hf")]
    return out


def _to_theirs(entry: layouts.Entry, array: np.ndarray, channels: int) -> np.ndarray:
    if entry.kind == "dense":
        return layouts.dense_out(array, entry.n_in)
    if entry.kind == "patch":
        return layouts.patch_out(array, channels)
    if entry.kind == "bias":
        return array.reshape(-1)
    return array


def _write_processor_config(cfg: VLMConfig, directory: str) -> None:
    """LlavaProcessor's settings, as llava-hf's directories carry them: without them a server that
    loads the directory with AutoProcessor (transformers serve, vLLM) cannot expand `<image>`
    into the image's tokens."""
    import json

    settings = {"processor_class": "LlavaProcessor", "image_token": "<image>", "patch_size": cfg.vision.patch_size,
                "vision_feature_select_strategy": cfg.select_strategy, "num_additional_image_tokens": 1}  # CLS
    with open(os.path.join(directory, "processor_config.json"), "w") as f:
        json.dump(settings, f, indent=2)


def save_pretrained(model: VLM, directory: str, *, max_shard_bytes: int = 5 * 2**30, dtype=None) -> None:
    """Write config.json + safetensors that transformers' `from_pretrained` loads.

    One parameter is gathered to the host at a time. `dtype` (e.g. 'bfloat16')
    converts on the way out; the default keeps the parameter dtype. LoRA adapters
    are folded into their kernels first (`comd_jax.models.build.merge_lora`).
    """
    from flax import nnx

    model = build.merge_lora(model)  # transformers gets a plain model; a no-op without LoRA
    cfg = model.cfg
    hf_cfg = _hf_configs(cfg)
    os.makedirs(directory, exist_ok=True)
    if jax.process_index() == 0:
        hf_cfg.save_pretrained(directory)
        if cfg.vision is not None:
            _write_processor_config(cfg, directory)
    flat = flatten_dict(nnx.state(model).to_pure_dict())
    out_dtype = dtype_of(dtype) if dtype else None
    channels = cfg.vision.num_channels if cfg.vision else 3
    writer = ShardedWriter(directory, max_shard_bytes)
    total = 0
    for entry, prefix in _export_entries(cfg):
        leaf = flat[entry.path]
        layers = range(leaf.shape[0]) if "{i}" in entry.name else [None]
        for i in layers:
            part = leaf if i is None else leaf[i]
            host = np.asarray(multihost_utils.process_allgather(part, tiled=True)
                              if jax.process_count() > 1 else jax.device_get(part))
            if jax.process_index() != 0:
                continue
            if out_dtype is not None:
                host = host.astype(out_dtype)
            name = layouts.full_name(prefix, entry.name.format(i=i) if i is not None else entry.name)
            tensor = _to_theirs(entry, host, channels)
            total += tensor.nbytes
            writer.add(name, tensor)
    if jax.process_index() == 0:
        writer.close(total)
