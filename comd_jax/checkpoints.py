"""A model from either checkpoint kind users have, for everything that loads one (the teacher
server, the evaluators, the CoMD student's rounds, the world teacher's export):

- an Orbax stage checkpoint: `WORKDIR/checkpoints/<stage>` (its latest step) or
  `.../<stage>/<step>`; only the parameters are read (a partial restore), so the optimizer
  state, whose shape depends on the stage's freezing, never loads;
- a transformers-format directory (has config.json): `load_pretrained`, its architecture the
  checkpoint's and how it computes (dtypes) the config's;
- nothing: random weights (tests, load checks).

A training run's own resume (parameters, optimizer state, data position) is the trainer's, in
`comd_jax/train/`; this module only reads parameters.
"""
from __future__ import annotations

import os
from typing import Optional

import jax

from comd_jax import sharding as shd
from comd_jax.models import build


def is_transformers_dir(path: str) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "config.json"))


def resolve_step(path: str) -> tuple[str, int]:
    """(the stage's checkpoint directory, step): a step folder as given, else the stage's latest.
    Always absolute: Orbax refuses a relative path."""
    path = os.path.abspath(path)
    name = os.path.basename(path)
    if name.isdigit() and os.path.isdir(os.path.join(path, "state")):
        return os.path.dirname(path), int(name)
    steps = [int(n) for n in os.listdir(path) if n.isdigit() and os.path.isdir(os.path.join(path, n, "state"))]
    if not steps:
        raise FileNotFoundError(f"{path}: neither a transformers directory (config.json) nor an Orbax stage "
                                "checkpoint (<stage>/<step>/state)")
    return path, max(steps)


def restore_params(path: str, model_cfg, mesh=None, recipe: str = "fsdp") -> dict:
    """The parameters of an Orbax stage checkpoint, placed by the recipe's shardings on `mesh`
    (one device when None)."""
    import orbax.checkpoint as ocp

    directory, step = resolve_step(path)
    mesh = mesh if mesh is not None else shd.make_mesh((1, 1, 1), jax.devices()[:1])
    rules = shd.rules_for(recipe)
    _, abstract = build.abstract_model(model_cfg, rules)
    shardings = build.param_shardings(abstract, mesh, rules)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract.to_pure_dict(), shardings)
    restore_args = ocp.checkpoint_utils.construct_restore_args({"params": target})
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            os.path.join(directory, str(step), "state"),
            args=ocp.args.PyTreeRestore(item={"params": target}, restore_args=restore_args, partial_restore=True))
    return restored["params"]


def load_model(model_cfg, checkpoint: Optional[str], mesh=None, recipe: str = "fsdp", seed: int = 0):
    """Our VLM from `checkpoint` (either kind above; empty: random weights from `seed`).
    `model_cfg` may be None only for a transformers directory, which carries its architecture."""
    rules = shd.rules_for(recipe)
    if is_transformers_dir(checkpoint or ""):
        from comd_jax.convert.hf import load_pretrained

        dtypes = {} if model_cfg is None else {"dtype": model_cfg.dtype, "param_dtype": model_cfg.param_dtype}
        return load_pretrained(checkpoint, mesh, recipe=recipe, **dtypes)
    if model_cfg is None:
        raise ValueError(f"{checkpoint}: an Orbax checkpoint (or random weights) needs the model config")
    if not checkpoint:
        return build.build_model(model_cfg, mesh, rules, seed)
    graphdef, abstract = build.abstract_model(model_cfg, rules)
    return build.merge(graphdef, abstract, restore_params(checkpoint, model_cfg, mesh, recipe))
