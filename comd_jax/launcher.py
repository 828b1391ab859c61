"""Every launcher's start-up (train, eval, serve, ablation), in the order it must happen.

  workdir = launcher.start(config, flags.FLAGS.workdir)

1. Log verbosity: WARNING unless `-v` was given (Orbax logs every save at INFO).
2. Join the distributed job the flags describe, before anything touches a JAX backend:
   joining fixes the global device list.
3. The workdir as an absolute path (Orbax refuses relative ones), printed once.
4. JAX's persistent compilation cache, before anything compiles.
"""
from __future__ import annotations

from typing import Optional

from comd_jax import distributed


def start(config, workdir: str, *, plan: Optional[distributed.Plan] = None, quiet: bool = True) -> str:
    """The absolute workdir, once the process is ready to build and compile. `plan`: an
    already-checked start-up plan (the server refuses multi-process ones); default: the flags'.
    `quiet=False` keeps absl's INFO logs (the server's request log)."""
    from absl import flags, logging

    if quiet and not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if plan is None:
        distributed.initialize_from_flags()
    else:
        distributed.initialize(plan)
    from comd_jax import compile_cache, paths

    workdir = paths.startup(config, workdir)
    compile_cache.enable(config, workdir)  # a parent's JAX_COMPILATION_CACHE_DIR wins
    return workdir
