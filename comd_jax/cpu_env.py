"""Process settings that make CPU training faster; set before the process starts.

    from comd_jax import cpu_env
    cpu_env.reexec_if_needed()   # first line of a CPU launcher's main()

Why: XLA:CPU allocates each step's temporaries afresh (hundreds of MB for a
small model), and glibc serves blocks that large with a new mmap every time,
so every step page-faults all of them in again, 4 KiB at a time. With
`glibc.malloc.hugetlb=1` glibc asks for transparent huge pages on those
mappings: ~500x fewer faults; on the 2-core benchmark machine the train step
spent ~10% less CPU time (see docs/notes/benchmarks-history.md). glibc reads the tunable only at
process start, hence the re-exec. Harmless elsewhere: other allocators and
older glibc ignore it; settings the user already exported win.
"""
from __future__ import annotations

import os
import sys

DEFAULTS = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
_MARK = "COMD_CPU_ENV"  # set on re-exec, so a process never re-execs twice


def missing(env=None) -> dict:
    """The defaults not yet present in `env` (os.environ by default)."""
    env = os.environ if env is None else env
    return {k: v for k, v in DEFAULTS.items() if k not in env}


def with_defaults(env=None) -> dict:
    """A copy of `env` with the defaults added (for launching subprocesses)."""
    env = dict(os.environ if env is None else env)
    env.update(missing(env))
    return env


def reexec_if_needed(argv=None) -> None:
    """Restart this Python process with the defaults set, unless already there.

    Call it before doing any work: the process is replaced, so nothing done
    before the call survives. `argv` defaults to how this process was started
    (`python -m pkg.mod args`, `python -c ...` and scripts restart as such)."""
    if os.environ.get(_MARK) or not missing():
        return
    if argv is None:
        argv = _original_argv()
    os.execve(sys.executable, [sys.executable, *argv], {**with_defaults(), _MARK: "1"})


def _original_argv() -> list:
    """The interpreter's own arguments (`-m module`, `-c code`, a script, flags)."""
    orig = getattr(sys, "orig_argv", None)  # Python >= 3.10
    if orig:
        return list(orig[1:])
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        name = spec.name[:-len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return ["-m", name, *sys.argv[1:]]
    return list(sys.argv)
