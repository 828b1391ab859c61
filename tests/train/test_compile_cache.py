"""The persistent compilation cache the launchers switch on: where it goes, and that a
second process loads what the first compiled instead of compiling it again."""
import json
import os
import subprocess
import sys

from comd_jax import compile_cache
from tests._multidevice import REPO


def test_where_the_cache_goes(tmp_path):
    work = str(tmp_path / "work")
    assert compile_cache.resolve("compilation_cache", work, env={}) == os.path.join(work, "compilation_cache")
    assert compile_cache.resolve("/abs/cache", work, env={}) == "/abs/cache"
    assert compile_cache.resolve("~/cache", work, env={}) == os.path.expanduser("~/cache")
    assert compile_cache.resolve("gs://b/cache", work, env={}) == "gs://b/cache"
    assert compile_cache.resolve("cc", "gs://b/run/", env={}) == "gs://b/run/cc"
    assert compile_cache.resolve("", work, env={}) is None  # off
    assert compile_cache.resolve("cc", "", env={}) is None  # relative, and no workdir to put it in
    # The environment (the user's, or a parent launcher's) wins, even over "" in the config.
    for setting in ("cc", "", "/abs"):
        assert compile_cache.resolve(setting, work, env={compile_cache.ENV: "/theirs"}) == "/theirs"
    # A relative workdir is made absolute, so a child process started elsewhere finds the same place.
    assert os.path.isabs(compile_cache.resolve("cc", "relative/work", env={}))


_CHILD = """
import json, os, sys
import jax, jax.numpy as jnp
from ml_collections import ConfigDict
from comd_jax import compile_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
used = compile_cache.enable(ConfigDict({"compilation_cache_dir": sys.argv[1]}), sys.argv[2])
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
f(jnp.ones((64, 64))).block_until_ready()
print(json.dumps({"used": used, "exported": os.environ.get("JAX_COMPILATION_CACHE_DIR"),
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def _child(setting, workdir, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k != compile_cache.ENV}
    env.update({"JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO,
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **(extra_env or {})})
    proc = subprocess.run([sys.executable, "-c", _CHILD, setting, workdir], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    work = str(tmp_path / "work")
    first = _child("compilation_cache", work)
    cache = os.path.join(work, "compilation_cache")
    assert first["used"] == first["exported"] == cache  # exported: a child process uses the same cache
    assert first["misses"] >= 1 and first["hits"] == 0 and os.listdir(cache)
    second = _child("compilation_cache", work)
    assert second["hits"] >= 1 and second["misses"] == 0
    # Off: nothing is looked up or written.
    off = _child("", str(tmp_path / "other"))
    assert off["used"] is None and off["exported"] is None and off["hits"] == off["misses"] == 0
    assert not os.path.exists(tmp_path / "other")
    # A parent's cache, passed down in the environment, wins over the config's.
    inherited = _child("", str(tmp_path / "other"), {compile_cache.ENV: cache})
    assert inherited["used"] == cache and inherited["hits"] >= 1
