"""Which parts a data kind brings to the CoMD driver: one table of constructors.

A kind turns the job (`comd_jax.job.Job`) into a `Kind`: the first pool,
the evaluator, the teacher checkpoint to serve (when it has one of its own), and
any judges and augmentors only it can offer (the world's ground truth). The
driver's own tables hold what works on any data (the LLM judge and augmentor).
"""
from __future__ import annotations

from comd_jax.distill.protocol import Kind


def _world(job) -> Kind:
    from comd_jax.distill.offline import world_kind

    return world_kind(job)


def _user(job) -> Kind:
    from comd_jax.distill.user_data import user_kind

    return user_kind(job)


KINDS: dict = {"world": _world, "llava_json": _user, "tfds": _user}


def kind_for(job) -> Kind:
    name = job.config.data.kind
    if name not in KINDS:
        raise ValueError(f"config.data.kind={name!r}: the CoMD rounds run on {sorted(KINDS)}")
    return KINDS[name](job)
