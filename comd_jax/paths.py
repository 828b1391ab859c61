"""Local paths made absolute once, at a launcher's start-up; object-store URLs pass through.

    workdir = paths.startup(config, flags.FLAGS.workdir)   # first thing a launcher does

Why: Orbax (0.12 and later) refuses a relative checkpoint path, so the README's
first command with its default `--workdir=workdir` died at its first checkpoint.
An absolute path also means the same thing to the teacher server the run starts
as a child, to a resumed run, and in the `config.json` snapshot a run writes.

Library code keeps accepting relative paths (a notebook's `run(config, "wd")`);
the functions that hand a path to Orbax call `absolute` themselves.
"""
from __future__ import annotations

import os
from typing import Optional

# Config fields that name a local folder Orbax, TensorBoard or the compilation cache
# may read or write.
# `compilation_cache_dir` is not here: a relative one means "inside the workdir" (compile_cache).
CONFIG_PATHS = ("init_from", "init_vision_from", "distill.teacher_checkpoint")


def is_url(path: str) -> bool:
    """gs://bucket/run, s3://…, file://…: handed to epath/tensorstore as written."""
    return "://" in path


def absolute(path: Optional[str]) -> Optional[str]:
    """`path` with `~` expanded and made absolute; a URL, "" or None unchanged."""
    if not path or is_url(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def absolute_config(config) -> None:
    """Makes CONFIG_PATHS absolute in place (a locked ConfigDict lets existing fields change)."""
    for dotted in CONFIG_PATHS:
        *parents, key = dotted.split(".")
        section = config
        for name in parents:
            section = section[name]
        section[key] = absolute(section[key])


def startup(config, workdir: Optional[str], *, announce: bool = True) -> Optional[str]:
    """The launchers' one call: the config's paths and the workdir made absolute; prints the
    workdir the run uses (a user who typed no --workdir learns where their files go)."""
    if config is not None:
        absolute_config(config)
    workdir = absolute(workdir)
    if announce and workdir:
        from comd_jax import multihost

        if multihost.is_writer():
            print(f"workdir: {workdir}", flush=True)
    return workdir
