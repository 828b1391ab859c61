"""Accelerator topologies the compile check simulates: devices, memory, default recipe.

`devices` counts what JAX sees (a v4 chip is one megacore device); `hbm_gib`
is each device's memory. Default mesh: every device on the FSDP axis, or FSDP
across pairs with 2-way tensor parallelism for `fsdp_tp`.
"""
from __future__ import annotations

import dataclasses

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    devices: int
    hbm_gib: float
    recipe: str
    about: str

    def default_mesh(self, recipe: str) -> tuple:
        """(data, fsdp, tensor) for a recipe on this many devices."""
        if recipe == "dp":
            return (self.devices, 1, 1)
        if recipe == "fsdp_tp" and self.devices % 2 == 0:
            return (1, self.devices // 2, 2)
        return (1, self.devices, 1)


TOPOLOGIES = {t.name: t for t in (
    Topology("v4-8", 4, 32, "fsdp", "TPU v4, 4 chips x 32 GiB HBM2"),
    Topology("v5p-8", 4, 95, "fsdp", "TPU v5p, 4 chips x 95 GiB HBM2e"),
    Topology("v5e-8", 8, 16, "fsdp", "TPU v5e (v5litepod-8), 8 chips x 16 GiB HBM2"),
    Topology("8xh100", 8, 80, "fsdp", "8 x NVIDIA H100 80 GB"),
    Topology("8xa100-40g", 8, 40, "fsdp", "8 x NVIDIA A100 40 GB"),
    Topology("8xa100-80g", 8, 80, "fsdp", "8 x NVIDIA A100 80 GB"),
)}

RECIPES = ("dp", "fsdp", "fsdp_tp")


def get(name: str) -> Topology:
    try:
        return TOPOLOGIES[name]
    except KeyError:
        raise ValueError(f"unknown topology {name!r}; choose one of {sorted(TOPOLOGIES)}") from None
