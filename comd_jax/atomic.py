"""Files and folders that appear whole or not at all, so that a run killed while writing
them (SIGKILL, preemption, a full disk) leaves nothing half-done for the rerun to trip over."""
from __future__ import annotations

import contextlib
import os
import shutil


def write_text(path: str, text: str) -> None:
    """`path` holds `text` or what it held before, never a torn mix."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_bytes(path: str, data: bytes) -> None:
    """`path` holds `data` or what it held before, never a torn mix."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def directory(path: str):
    """`with directory(out) as tmp:` write into `tmp`; on success it becomes `out` (replacing
    an older `out`); on an error or a kill, `out` is untouched and the next call clears `tmp`."""
    tmp = f"{path}.partial"
    shutil.rmtree(tmp, ignore_errors=True)  # a killed earlier attempt's leftovers
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
