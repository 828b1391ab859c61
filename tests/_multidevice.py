"""Run a test body in a fresh interpreter with 8 simulated CPU devices.

The device count is fixed when jax first initializes, so sharded checks run in
a subprocess instead of sharing the test session's single-device jax.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from tests._paths import REPO



def run_with_devices(code: str, devices: int = 8, timeout: int = 600) -> dict:
    """Execute `code` (which must set a dict named `result`) and return `result`."""
    script = textwrap.dedent(code) + "\nimport json as _j\nprint('RESULT=' + _j.dumps(result))\n"
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    if proc.returncode:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT=")][-1]
    return json.loads(line[len("RESULT="):])
