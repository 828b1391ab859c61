"""The CPU process-settings helper: defaults added, the user's own settings win."""
import os
import subprocess
import sys

from comd_jax import cpu_env
from tests._paths import REPO



def test_defaults_fill_only_what_is_missing():
    assert cpu_env.with_defaults({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert cpu_env.with_defaults({"GLIBC_TUNABLES": "mine"})["GLIBC_TUNABLES"] == "mine"
    assert cpu_env.missing({"GLIBC_TUNABLES": "mine"}) == {}


def test_reexec_restarts_once_with_the_defaults():
    code = ("from comd_jax import cpu_env; cpu_env.reexec_if_needed(); import os, sys; "
            "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "COMD_CPU_ENV")}
    env["PYTHONPATH"] = REPO
    out = subprocess.run([sys.executable, "-c", code, "x"], env=env, capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.strip()
    assert out == "glibc.malloc.hugetlb=1 ['x']"
