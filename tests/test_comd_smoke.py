"""One tiny CoMD round end to end: world, teacher trained and served by our server
in its own process, student stages, tune → assess → select → augment, per-round
evaluation and the report."""
import json
import os
import subprocess
import sys

from tests._multidevice import REPO


def test_smoke_preset_runs_the_whole_method(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "train.py"),
                           f"--config={os.path.join(REPO, 'configs', 'comd.py')}:smoke", f"--workdir={tmp_path}"],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-6000:]
    report = tmp_path / "report"
    for name in ("report.md", "results.json", "score_by_round.png", "per_skill.png"):
        assert (report / name).stat().st_size > 0, name
    rounds = json.load(open(report / "results.json"))["rounds"]
    assert [r["round"] for r in rounds] == [0]
    r0 = rounds[0]
    assert set(r0["student"]) >= {"colour", "counting", "multiple_choice", "mean"}
    assert set(r0["teacher"]) == set(r0["student"])
    assert r0["pool_size"] == 12 and r0["hard"] is not None and len(r0["student_params_sha256"]) == 64
    state = json.load(open(tmp_path / "distill" / "state.json"))
    assert [h["phase"] for h in state["history"]] == ["tune", "assess", "select", "augment"]
    assessed = [json.loads(l) for l in open(tmp_path / "distill" / "round0_assess.jsonl")]
    assert len(assessed) == 12 and all(a["scores"]["teacher"] is not None for a in assessed)
    # The teacher answered through the real server: every pool target came back over HTTP.
    pool = [json.loads(l) for l in open(tmp_path / "distill" / "train_pool.jsonl")]
    assert all(p["provenance"]["answered_by"] in ("teacher", "student") for p in pool)
