"""Train state, built from shapes: eval_shape → shardings → jitted init into shards."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from comd_jax import sharding as shd
from comd_jax.models import build
from comd_jax.models.config import VLMConfig
from comd_jax.train.optim import OptimConfig, make_optimizer


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything static about a training run's model, optimizer and mesh."""

    model_cfg: VLMConfig
    optim_cfg: OptimConfig
    mesh: Mesh
    rules: tuple
    graphdef: Any
    abstract: Any  # nnx.State of ShapeDtypeStructs
    tx: Any
    labels: dict
    state_shardings: TrainState
    abstract_state: TrainState

    def model(self, params: dict):
        """The NNX model bound to `params` (works under jit and eagerly)."""
        return build.merge(self.graphdef, self.abstract, params)


def _opt_state_shardings(abstract_opt_state, param_shardings: dict, mesh: Mesh):
    """Optimizer moments follow their parameter's sharding; counters are replicated.

    An optimizer leaf belongs to the parameter whose path ends its dict-key path
    (optax nests the params tree under named tuples and multi_transform's labels)."""
    flat = flatten_dict(param_shardings)
    replicated = NamedSharding(mesh, P())

    def pick(path, leaf):
        keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
        for start in range(len(keys)):
            sharding = flat.get(keys[start:])
            if sharding is not None and len(sharding.spec) <= len(leaf.shape):
                return sharding
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def create_setup(model_cfg: VLMConfig, optim_cfg: OptimConfig, mesh: Mesh, recipe: str = "fsdp") -> Setup:
    rules = shd.rules_for(recipe)
    graphdef, abstract = build.abstract_model(model_cfg, rules)
    abstract_params = abstract.to_pure_dict()
    tx, labels = make_optimizer(optim_cfg, abstract_params)
    param_shardings = build.param_shardings(abstract, mesh, rules)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    replicated = NamedSharding(mesh, P())
    shardings = TrainState(step=replicated, params=param_shardings,
                           opt_state=_opt_state_shardings(abstract_opt, param_shardings, mesh))
    abstract_state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                                opt_state=abstract_opt)
    return Setup(model_cfg, optim_cfg, mesh, rules, graphdef, abstract, tx, labels, shardings, abstract_state)


def init_state(setup: Setup, seed: int = 0, params: Optional[dict] = None) -> TrainState:
    """A fresh state; parameters from `params` (e.g. `load_pretrained`) or random from `seed`."""
    if params is None:
        params = build.init_params(setup.model_cfg, setup.mesh, setup.rules, seed)

    def init(p):
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=setup.tx.init(p))

    return jax.jit(init, in_shardings=(setup.state_shardings.params,),
                   out_shardings=setup.state_shardings)(params)
