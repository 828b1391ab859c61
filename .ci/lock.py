"""Write constraints.txt: the exact versions of comd_jax[test] and everything it pulls in,
as installed in this environment. Run it after the suite and the smoke run pass on new
versions, and commit its output on its own:

    pip install -U -e '.[test]' && python -m pytest -q && python .ci/lock.py > constraints.txt

Only the dependency closure is listed (not whatever else the machine has). Local version
tags are dropped (torch 2.13.0+cpu -> 2.13.0), so the pin reads as setup.py spells it.
"""
import re
from importlib import metadata

from packaging.requirements import Requirement


def closure(root: str, extras=("test",)) -> dict:
    seen, todo = {}, [(root, set(extras))]
    while todo:
        name, wanted = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # an optional or platform-only dependency
            continue
        if key in seen and wanted <= seen[key][1]:
            continue
        seen[key] = (dist, wanted | (seen[key][1] if key in seen else set()))
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                todo.append((req.name, set(req.extras)))
    return seen


if __name__ == "__main__":
    pins = closure("comd_jax")
    pins.pop("comd-jax")
    print("# Exact versions CI ran (python .ci/lock.py); setup.py keeps the ranges.")
    for key, (dist, _) in sorted(pins.items()):
        print(f"{dist.metadata['Name']}=={dist.version.split('+')[0]}")
