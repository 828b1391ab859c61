"""Meshes and logical-axis rules.

Every parameter carries `logical_axes` metadata; activations are constrained by
logical names too. One rules table per recipe maps each logical name to mesh
axes (each name appears once). A mesh axis is dropped for a dimension it does not
divide, or that already uses it, so small tensors simply stay replicated.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

# Logical name → mesh axes. Names absent from a table are replicated.
RULES = {
    # Pure data parallelism: parameters replicated, batch split over every device.
    "dp": (
        ("batch", BATCH),
    ),
    # ZeRO-3 style: every large matrix split along its model dimension.
    "fsdp": (
        ("batch", BATCH),
        ("embed", "fsdp"),
    ),
    # FSDP across hosts, Megatron-style tensor parallelism inside a host.
    "fsdp_tp": (
        ("batch", BATCH),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("vocab", "tensor"),
    ),
}


def rules_for(recipe: str) -> tuple:
    try:
        return RULES[recipe]
    except KeyError:
        raise ValueError(f"unknown sharding recipe {recipe!r}; choose one of {sorted(RULES)}") from None


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = 1
    fsdp: int = -1  # -1: whatever devices remain
    tensor: int = 1
    recipe: str = "fsdp"

    def shape(self, num_devices: int) -> tuple:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1:
            raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(f"{num_devices} devices do not divide into mesh {sizes}")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                             f"have {num_devices}")
        return tuple(sizes)


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh. The tensor axis is innermost so it stays on
    fast intra-host links; data/fsdp span hosts."""
    devices = list(jax.devices() if devices is None else devices)
    data, fsdp, tensor = shape
    sizes = MeshConfig(data, fsdp, tensor).shape(len(devices))
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(sizes, devices=devices)
    except Exception:  # irregular device sets (e.g. a subset of CPU devices)
        grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, MESH_AXES)


def logical_to_spec(axes: Sequence[Optional[str]], shape: Sequence[int], rules, mesh) -> P:
    table = dict(rules)
    used: set = set()
    spec = []
    for name, dim in zip(axes, shape):
        target = table.get(name) if name is not None else None
        if target is None:
            spec.append(None)
            continue
        chosen = []
        size = 1
        for axis in (target,) if isinstance(target, str) else target:
            axis_size = mesh.shape[axis]
            if axis in used or axis_size == 1 or dim % (size * axis_size):
                continue
            chosen.append(axis)
            size *= axis_size
        used.update(chosen)
        spec.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
    return P(*spec)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def logical_axes_of(state) -> object:
    """The `logical_axes` metadata of every variable in an nnx State, as a pure tree."""
    def axes(v):
        found = v.get_metadata().get("logical_axes")
        if found is None:
            raise ValueError(f"variable of shape {v.shape} has no logical_axes metadata")
        return tuple(found)

    return jax.tree.map(axes, state, is_leaf=_is_variable)


def state_shardings(state, mesh: Mesh, rules):
    """NamedSharding for every variable of an (abstract) nnx State, as a pure-dict tree."""
    def one(v):
        axes = v.get_metadata().get("logical_axes")
        return NamedSharding(mesh, logical_to_spec(axes, v.shape, rules, mesh))

    return _pure(jax.tree.map(one, state, is_leaf=_is_variable))


def _pure(tree):
    """nnx.State (possibly holding non-array leaves) → nested plain dicts."""
    if isinstance(tree, (nnx.State, dict)):
        return {k: _pure(v) for k, v in tree.items()}
    return tree


def batch_sharding(mesh: Mesh, rules, ndim: int = 2) -> NamedSharding:
    """Arrays whose leading axis is the batch: split over the batch's mesh axes."""
    target = dict(rules).get("batch", BATCH)
    return NamedSharding(mesh, P(target, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
