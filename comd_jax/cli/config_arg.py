"""`--config=configs/comd.py:smoke` from any directory.

A `--config` path that is not a file here but names one of the package's own configs
(`comd.py`, `configs/comd.py`, `snapshot.py`, ...) is that file in `comd_jax/configs/`, so the
README's flags work with an installed comd_jax and no checkout. A file that exists wins: a
user's own config is always read as given.
"""
import os
from typing import List, Sequence

from comd_jax import configs


def resolve_value(value: str) -> str:
    """One `--config` value (path[:arg]): the packaged config when the path is not a file here."""
    path, sep, arg = value.partition(":")
    if os.path.isfile(path):
        return value
    name = os.path.basename(path)
    packaged = os.path.join(configs.DIR, name)
    parent = os.path.basename(os.path.dirname(os.path.normpath(path)))
    if name.endswith(".py") and os.path.isfile(packaged) and parent in ("", "configs"):
        return packaged + sep + arg
    return value


def resolve(argv: Sequence[str], flag: str = "config") -> List[str]:
    """argv with `--config=VALUE` (or `--config VALUE`) pointed at the packaged config if need be."""
    out, key, take_next = [], f"--{flag}", False
    for a in argv:
        if take_next:
            out.append(resolve_value(a))
            take_next = False
        elif a.startswith(key + "="):
            out.append(key + "=" + resolve_value(a[len(key) + 1:]))
        else:
            take_next = a == key
            out.append(a)
    return out
