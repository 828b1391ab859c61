"""JAX's persistent compilation cache, switched on by the launchers.

    from comd_jax import compile_cache
    compile_cache.enable(config, workdir)   # before the first jit

Why: every process compiles its train steps, evaluation and generation
functions from scratch. A run resumed after a kill or a preemption, the next
seed of an ablation, the teacher server the distillation starts, and a re-run of
the same preset compile exactly what the last process did. With the cache
they load it instead (the smoke preset: 134 s cold, 62 s warm; BENCHMARKS.md).
A cached executable is the one XLA compiled, so results stay bit-identical.

Where, in this order:
- `JAX_COMPILATION_CACHE_DIR` in the environment, when set: the user's choice,
  or a parent launcher's (a distillation's teacher server, an ablation's runs);
- else `config.compilation_cache_dir`: a relative path is taken inside the
  workdir (the presets: `compilation_cache`, so a resumed run finds it), an
  absolute one or a URL (gs://) as given, "" turns the cache off.
The directory chosen is exported to the environment, so child processes use
the same one.

A launcher calls this once, before anything compiles; library code never does
(it would change the process for whoever imported it). Keep one cache per
kind of machine: on CPU an executable is compiled for the host's instruction
set, so a cache shared between different CPU models (a network home directory)
is not safe; the workdir default avoids that.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

ENV = "JAX_COMPILATION_CACHE_DIR"


def resolve(setting: str, workdir: Optional[str], env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The cache directory the rules above pick, or None for no cache."""
    env = os.environ if env is None else env
    if env.get(ENV):
        return env[ENV]
    if not setting:
        return None
    setting = os.path.expanduser(setting)
    if "://" in setting or os.path.isabs(setting):
        return setting
    if not workdir:  # a relative setting and no workdir to put it in (e.g. eval without --workdir)
        return None
    if "://" in workdir:
        return f"{workdir.rstrip('/')}/{setting}"
    return os.path.join(os.path.abspath(workdir), setting)


def enable(config, workdir: Optional[str]) -> Optional[str]:
    """Point JAX's persistent compilation cache where `config.compilation_cache_dir`
    and the environment say (`resolve`) and export it to child processes; returns
    the directory (None: left off)."""
    import jax

    directory = resolve(config.compilation_cache_dir, workdir)
    if directory is None:
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    os.environ[ENV] = directory
    return directory
