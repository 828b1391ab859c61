"""Orbax checkpoints of a training stage: state (params, optimizer, step, rng)
plus a JSON side-car (data-iterator position and anything else small).

Restores go through the target's shardings, so a checkpoint written on 8
devices restores onto 1 or 4: Orbax reads each shard where it now lives.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class StageCheckpoints:
    def __init__(self, directory: str, *, save_every: int, keep: int = 3, async_save: bool = True):
        # gs://bucket/... stays as it is (Orbax writes it through epath/tensorstore); abspath would
        # turn it into a local folder named 'gs:'.
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(save_every, 1), max_to_keep=keep, create=True,
            # A save cut short by a kill leaves a <step>.orbax-checkpoint-tmp-* folder; the
            # rerun resumes from the last finished step and clears these.
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Saves when `step` is on the interval (or `force`); async where enabled."""
        return self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force)

    def restore(self, step: int, abstract_state: Any, shardings: Any):
        """(state, meta) with every array placed by `shardings` (any mesh)."""
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract_state, shardings)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()
