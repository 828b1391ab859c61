"""A model to evaluate, from either checkpoint kind users have.

- an Orbax stage checkpoint: `WORKDIR/checkpoints/<stage>` (latest step) or
  `.../<stage>/<step>`; only the parameters are read (partial restore), so the
  optimizer state, whose shape depends on the stage's freezing, never loads;
- a transformers-format directory (has config.json): `load_pretrained`.
"""
from __future__ import annotations

import os
from typing import Optional

import jax
import orbax.checkpoint as ocp

from comd_jax import sharding as shd
from comd_jax.models import build
from comd_jax.models.config import VLMConfig


def is_transformers_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def resolve_step(path: str) -> tuple[str, int]:
    """(the stage's checkpoint directory, step): a step folder, or the latest in a stage folder."""
    path = os.path.abspath(path)
    name = os.path.basename(path)
    if name.isdigit() and os.path.isdir(os.path.join(path, "state")):
        return os.path.dirname(path), int(name)
    steps = [int(n) for n in os.listdir(path) if n.isdigit() and os.path.isdir(os.path.join(path, n, "state"))]
    if not steps:
        raise FileNotFoundError(f"{path}: neither a transformers directory (config.json) nor an Orbax stage "
                                "checkpoint (<stage>/<step>/state)")
    return path, max(steps)


def restore_params(path: str, model_cfg: VLMConfig, mesh=None, recipe: str = "fsdp") -> dict:
    """The parameters of an Orbax stage checkpoint, placed by the recipe's shardings on `mesh`."""
    directory, step = resolve_step(path)
    mesh = mesh if mesh is not None else shd.make_mesh((1, 1, 1), jax.devices()[:1])
    rules = shd.rules_for(recipe)
    _, abstract = build.abstract_model(model_cfg, rules)
    shardings = build.param_shardings(abstract, mesh, rules)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract.to_pure_dict(), shardings)
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            os.path.join(directory, str(step), "state"),
            args=ocp.args.PyTreeRestore(item={"params": target}, restore_args={"params": restore_args},
                                        partial_restore=True))
    return restored["params"]


def load_model(path: str, model_cfg: Optional[VLMConfig] = None, mesh=None, recipe: str = "fsdp"):
    """Our VLM from `path`; `model_cfg` is needed for Orbax checkpoints (transformers dirs carry theirs)."""
    if is_transformers_dir(path):
        from comd_jax.convert.hf import load_pretrained

        return load_pretrained(path, mesh, recipe=recipe)
    if model_cfg is None:
        raise ValueError(f"{path}: an Orbax checkpoint needs the model config it was trained with")
    rules = shd.rules_for(recipe)
    graphdef, abstract = build.abstract_model(model_cfg, rules)
    return build.merge(graphdef, abstract, restore_params(path, model_cfg, mesh, recipe))
