"""Shapes first: abstract model → shardings → jitted init straight into shards.

A 7B model is never materialized whole on one device: `eval_shape` gives the
tree, the rules table gives each leaf's sharding, and the jitted initializer
writes each shard where it lives.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from comd_jax import sharding as shd
from comd_jax.models import lora
from comd_jax.models.config import VLMConfig
from comd_jax.models.vlm import VLM


def abstract_model(cfg: VLMConfig, rules=None):
    """(graphdef, abstract nnx.State) without allocating a parameter."""
    model = nnx.eval_shape(lambda: VLM(cfg, rngs=nnx.Rngs(0), rules=rules))
    return nnx.split(model)


def param_shardings(abstract_state, mesh, rules):
    return shd.state_shardings(abstract_state, mesh, rules)


def init_params(cfg: VLMConfig, mesh, rules, seed: int,
                keep: Optional[Callable[[tuple], bool]] = None) -> dict:
    """Random parameters as a pure dict of arrays, each created in its shards.

    `keep(path)` selects a subset (e.g. a fresh projector); XLA drops the rest
    of the initializer, so unselected leaves cost nothing.
    """
    _, abstract = abstract_model(cfg, rules)
    flat_shardings = flatten_dict(param_shardings(abstract, mesh, rules))
    paths = [p for p in flat_shardings if keep is None or keep(p)]

    def init(key):
        state = nnx.state(VLM(cfg, rngs=nnx.Rngs(key), rules=rules)).to_pure_dict()
        flat = flatten_dict(state)
        return {p: flat[p] for p in paths}

    out_shardings = {p: flat_shardings[p] for p in paths}
    # Random init is a one-off: on CPU, XLA's optimizing passes over dozens of
    # threefry kernels cost far more compile time than they save at run time.
    options = {"xla_backend_optimization_level": 0} if mesh.devices.flat[0].platform == "cpu" else None
    flat = jax.jit(init, out_shardings=out_shardings, compiler_options=options)(jax.random.key(seed))
    return unflatten_dict(flat)


def merge(graphdef, abstract_state, params: dict) -> VLM:
    """Bind a pure dict of arrays to the model graph."""
    state = jax.tree.map(lambda x: x, abstract_state)  # fresh copy, never mutate the template
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def build_model(cfg: VLMConfig, mesh=None, rules=None, seed: int = 0) -> VLM:
    """A randomly initialized model, sharded over `mesh` (single device when None)."""
    mesh = mesh if mesh is not None else shd.make_mesh((1, 1, 1), jax.devices()[:1])
    rules = rules if rules is not None else shd.rules_for("fsdp")
    graphdef, abstract = abstract_model(cfg, rules)
    return merge(graphdef, abstract, init_params(cfg, mesh, rules, seed))


def merge_lora(model):
    """The same function as a plain (rank 0) model: adapters folded into the kernels.

    Each merged leaf keeps its sharding; the input model is left untouched.
    """
    cfg = model.cfg
    if not cfg.lora_rank:
        return model
    params = nnx.state(model).to_pure_dict()
    shardings = unflatten_dict({p: v.sharding for p, v in flatten_dict(params).items() if not lora.is_adapter(p)})
    merged = jax.jit(lambda p: lora.merge_lora_params(p, cfg), out_shardings=shardings)(params)
    graphdef, abstract = abstract_model(dataclasses.replace(cfg, lora_rank=0), model.rules)
    return merge(graphdef, abstract, merged)
