"""The trainer: exact resume after SIGKILL, restore onto another mesh, frozen parts
stay bit-identical, held-out loss falls."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests._multidevice import REPO, run_with_devices

SMOKE_TUNE = ["--config.stages=('tune',)", "--config.distill.rounds=0", "--config.tune.total_steps=8", "--config.tune.save_every=1",
              "--config.tune.log_every=1", "--config.tune.eval_batches=1", "--config.tune.keep_checkpoints=2"]


def _env(cache_dir):
    # A shared compilation cache: restarted runs reuse the executables (the same
    # programs, so the same bits) instead of recompiling.
    return {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "PYTHONPATH": REPO}


def _command(workdir):
    return [sys.executable, os.path.join(REPO, "launch", "train.py"), "--config=" +
            os.path.join(REPO, "configs", "comd.py") + ":smoke", f"--workdir={workdir}", *SMOKE_TUNE]


def _world_into(workdir, world):
    os.makedirs(workdir, exist_ok=True)
    os.symlink(world, os.path.join(workdir, "world"))


def _fingerprint(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)[-1]["params_sha256"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run; its world and compilation cache are shared with the others."""
    root = tmp_path_factory.mktemp("trainer")
    workdir = root / "reference"
    proc = subprocess.run(_command(workdir), env=_env(root / "cache"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, str(workdir / "world"), _fingerprint(workdir)


def _steps_saved(workdir):
    path = os.path.join(workdir, "checkpoints", "tune")
    if not os.path.isdir(path):
        return []
    return sorted(int(n) for n in os.listdir(path) if n.isdigit())


@pytest.mark.e2e
@pytest.mark.parametrize("kill_after", [2, 5])
def test_sigkill_and_restart_is_bit_identical(reference, kill_after):
    root, world, expected = reference
    workdir = str(root / f"killed_{kill_after}")
    _world_into(workdir, world)
    proc = subprocess.Popen(_command(workdir), env=_env(root / "cache"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if _steps_saved(workdir) and max(_steps_saved(workdir)) >= kill_after:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_steps_saved(workdir))
    assert killed_at < 8, f"killed too late ({killed_at})"
    resumed = subprocess.run(_command(workdir), env=_env(root / "cache"), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)[-1]
    assert summary["resumed_from"] >= kill_after  # it really resumed rather than starting over
    assert summary["params_sha256"] == expected


TRAINER_COMMON = """
import jax, numpy as np
from flax.traverse_util import flatten_dict
from comd_jax import sharding as shd
from comd_jax.models import DecoderConfig, VisionConfig, VLMConfig
from comd_jax.train.optim import OptimConfig
from comd_jax.train.trainer import StageConfig, train_stage

cfg = VLMConfig(
    text=DecoderConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=8,
                       num_kv_heads=4),
    vision=VisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, image_size=16,
                        patch_size=4),
    image_token_id=127)

class ListData:
    '''Batches from a seeded generator; its position is the batch index.'''
    def __init__(self, n=64, b=8, t=40):
        rng = np.random.default_rng(0)
        self.batches = []
        for _ in range(n):
            ids = rng.integers(0, 120, (b, t)).astype(np.int32)
            ids[:, 1:17] = 127
            self.batches.append(dict(input_ids=ids, attention_mask=np.ones((b, t), np.int32),
                                     loss_mask=(np.arange(t) >= 18)[None].repeat(b, 0).astype(np.float32),
                                     pixel_values=rng.normal(size=(b, 1, 16, 16, 3)).astype(np.float32)))
        self.i = 0
    def __next__(self):
        self.i += 1
        return self.batches[self.i - 1]
    def get_state(self):
        return {"i": self.i}
    def set_state(self, s):
        self.i = s["i"]

def stage(total, trainable=(".*",), save_every=100):
    return StageConfig(name="s", optim=OptimConfig(learning_rate=3e-3, warmup_ratio=0.0, total_steps=total,
                                                   eps=1e-3, trainable=trainable),
                       global_batch=8, log_every=1, save_every=save_every, async_checkpoints=False,
                       head_capacity_steps=8)  # the LM head at the 22 target positions of 40 (width 25)

def flat(params):
    return {"/".join(map(str, k)): np.asarray(v) for k, v in flatten_dict(params).items()}
"""


@pytest.mark.e2e
def test_checkpoint_restores_onto_other_meshes(tmp_path):
    code = TRAINER_COMMON + f"""
import shutil
workdir = {str(tmp_path)!r}
mesh8 = shd.make_mesh((1, 8, 1))
# 4 steps on 8 devices, checkpointed at step 4.
train_stage(stage(4, save_every=4), cfg, mesh8, "fsdp", 0, workdir + "/w8", ListData())
result = {{}}
for n in (8, 4, 1):
    run_dir = workdir + f"/continue{{n}}"
    shutil.copytree(workdir + "/w8", run_dir)
    mesh = shd.make_mesh((1, n, 1), jax.devices()[:n])
    state, summary = train_stage(stage(6, save_every=4), cfg, mesh, "fsdp", 0, run_dir, ListData())
    result[n] = {{"resumed_from": summary["resumed_from"], "loss": summary["last_train"]["loss"],
                 "devices": len(jax.tree.leaves(state.params)[0].sharding.device_set)}}
"""
    result = run_with_devices(code)
    for n in ("4", "1"):
        assert result[n]["resumed_from"] == 4 and result[n]["devices"] == int(n)
        np.testing.assert_allclose(result[n]["loss"], result["8"]["loss"], rtol=1e-5)


def test_stage1_freezes_all_but_the_projector_and_loss_falls(tmp_path):
    code = TRAINER_COMMON + f"""
from comd_jax.train.state import create_setup, init_state
mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
data = ListData()
before = flat(init_state(create_setup(cfg, stage(1).optim, mesh, "fsdp"), 0).params)
held_out = [ListData(n=2).batches[1]]
state, summary = train_stage(stage(12, trainable=("projector/.*",)), cfg, mesh, "fsdp", 0,
                             {str(tmp_path)!r}, data, eval_data=lambda: held_out)
after = flat(state.params)
result = {{"changed": sorted(k for k in before if not np.array_equal(before[k], after[k])),
          "total": sorted(before), "eval_before": summary["eval_before"]["loss"],
          "eval_after": summary["eval_after"]["loss"]}}
"""
    result = run_with_devices(code, devices=1)
    assert result["changed"] == sorted(k for k in result["total"] if k.startswith("projector/"))
    assert result["changed"]  # the projector did train
    assert result["eval_after"] < result["eval_before"]
