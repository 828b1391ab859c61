"""One tiny CoMD round end to end: world, teacher trained and served by our server
in its own process, student stages, tune → assess → select → augment, per-round
evaluation and the report. Then the same run SIGKILLed inside assessment and
again inside augmentation, resumed each time, must end exactly where the
uninterrupted run did: same pools, same student parameters, same report.

The first run is the README's first command as a user types it, at the smoke size:
`python launch/train.py --config=configs/comd.py:smoke` from a fresh folder, with the
default (relative) workdir. Orbax refuses relative checkpoint paths, and every other
test passes an absolute temporary folder, so only this one would catch that."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests._paths import REPO, launch_env

pytestmark = pytest.mark.e2e

CONFIG = f"--config={os.path.join(REPO, 'configs', 'comd.py')}:smoke"
ENV = launch_env()
README_COMMAND = [sys.executable, "launch/train.py", "--config=configs/comd.py:smoke"]
# Every launch shares the session's persistent compilation cache (the environment wins over the
# config's workdir default), as a user's resumed run does: the runs after the first load
# their executables, and they must still end bit-identical to the uninterrupted run.
CACHE = "JAX_COMPILATION_CACHE_DIR"


TWO_ROUNDS = "--config.distill.rounds=2"  # round 1 trains on what round 0's assessment grew


def launch(workdir, prefix, *flags):
    return subprocess.run([sys.executable, *prefix, CONFIG, f"--workdir={workdir}", *flags], env=ENV,
                          capture_output=True, text=True, timeout=1200)


def train(workdir, *flags):
    proc = launch(workdir, [os.path.join(REPO, "launch", "train.py")], *flags)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc


def killed(workdir, phase, after):
    proc = launch(workdir, [os.path.join(REPO, "tests", "_killed_run.py"), phase, str(after), "--"], TWO_ROUNDS)
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-6000:])


def lines(path):
    return [json.loads(line) for line in open(path)]


def checkout(folder):
    """A folder laid out as a clone is, for typing the README's command in it."""
    for name in ("launch", "configs"):
        os.symlink(os.path.join(REPO, name), folder / name)
    return folder


def finished_steps(stage_dir):
    return sorted(int(d) for d in os.listdir(stage_dir) if d.isdigit()) if stage_dir.is_dir() else []


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    clone = checkout(tmp_path_factory.mktemp("clone"))
    proc = subprocess.run(README_COMMAND, cwd=clone, env=ENV, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-6000:]
    workdir = clone / "workdir"
    assert f"workdir: {workdir}" in proc.stdout  # the run says where its files went, absolute
    # What the later tests compare against, before they add rounds to this workdir.
    (workdir.parent / "first_results.json").write_text((workdir / "report" / "results.json").read_text())
    return workdir


def test_readme_command_writes_checkpoints_and_a_report(smoke):
    for stage in ("teacher_pretrain", "teacher_tune", "stage0", "stage1", "tune", "round0_tune"):
        steps = finished_steps(smoke / "checkpoints" / stage)
        assert steps and (smoke / "checkpoints" / stage / str(steps[-1]) / "state").is_dir(), stage
        assert not [d for d in os.listdir(smoke / "checkpoints" / stage) if "tmp" in d], stage
    assert json.loads((smoke / "report" / "results.json").read_text())["rounds"]


def test_killed_after_first_checkpoint_reruns_to_the_same_end(smoke, tmp_path):
    """The README's command SIGKILLed as soon as its first checkpoint is on disk, then typed again."""
    clone = checkout(tmp_path)
    checkpoints = clone / "workdir" / "checkpoints"
    first = subprocess.Popen(README_COMMAND, cwd=clone, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    try:
        while not (checkpoints.is_dir() and any(finished_steps(d) for d in checkpoints.iterdir())):
            assert first.poll() is None, f"exited before its first checkpoint: {first.stderr.read()[-4000:]}"
            assert time.monotonic() < deadline, "no checkpoint after 600 s"
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    assert not (clone / "workdir" / "report").exists()  # it really died mid-run

    proc = subprocess.run(README_COMMAND, cwd=clone, env=ENV, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-6000:]
    ours = json.loads((clone / "workdir" / "report" / "results.json").read_text())
    reference = json.loads((smoke.parent / "first_results.json").read_text())
    assert [r["student_params_sha256"] for r in ours["rounds"]] == \
        [r["student_params_sha256"] for r in reference["rounds"]]
    assert ours["rounds"] == reference["rounds"]  # scores, pool sizes, hard counts


def test_smoke_preset_runs_the_whole_method(smoke):
    report = smoke / "report"
    for name in ("report.md", "results.json", "score_by_round.png", "per_skill.png"):
        assert (report / name).stat().st_size > 0, name
    results = json.load(open(report / "results.json"))
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [0]
    for reliance in (results["teacher_image_reliance"], rounds[0]["student_image_reliance"]):
        assert reliance["tokens"] > 0 and reliance["gap"] == pytest.approx(
            reliance["loss_other_images"] - reliance["loss"])
    # Both probes read the same held-out answers: the whole scored prefix (eval.reliance_examples 0).
    assert results["teacher_image_reliance"]["tokens"] == rounds[0]["student_image_reliance"]["tokens"]
    assert json.load(open(smoke / "eval" / "teacher" / "world.json"))["settings"]["reliance_examples"] == 18
    r0 = rounds[0]
    assert results["benchmarks"] == ["world"]
    assert set(r0["student"]["world"]) >= {"colour", "counting", "multiple_choice", "mean"}
    assert set(results["teacher"]["world"]) == set(r0["student"]["world"]) == set(results["baseline"]["world"])
    assert r0["verdicts_excluded"] == 0  # the reference judge reads every answer
    # Each evaluation was kept as it finished: the warm-up student, every round, the teacher.
    for who in ("baseline", "round0", "teacher"):
        kept = json.load(open(smoke / "eval" / who / "world.json"))
        assert kept["result"]["scores"] == (results["teacher"] if who == "teacher" else results["baseline"]
                                            if who == "baseline" else r0["student"])["world"]
    state = json.load(open(smoke / "distill" / "state.json"))
    tuned = state["history"][0]
    # 12 instructions; one the smoke teacher answered with nothing is left out of the training set.
    assert r0["pool_size"] == tuned["train_pool"] == 12 - tuned["empty_targets"] >= 8
    assert r0["hard"] is not None and len(r0["student_params_sha256"]) == 64
    assert [h["phase"] for h in state["history"]] == ["tune", "assess", "select", "augment"]
    assessed = lines(smoke / "distill" / "round0_assess.jsonl")
    assert len(assessed) == 12 and all(a["scores"]["teacher"] is not None for a in assessed)
    # The teacher answered through the real server: every pool target came back over HTTP.
    pool = lines(smoke / "distill" / "train_pool.jsonl")
    assert all(p["provenance"]["answered_by"] in ("teacher", "student") for p in pool)
    assert len(lines(smoke / "distill" / "round0_augment.jsonl")) >= 4  # enough to die in the middle of
    # The runs filled the shared cache (the environment won over the workdir default).
    assert len(os.listdir(ENV[CACHE])) >= 5 and not (smoke / "compilation_cache").exists()


def test_killed_in_assessment_and_augmentation_resumes_to_the_same_end(smoke, tmp_path):
    train(smoke, TWO_ROUNDS)  # the reference: the finished smoke run given one more round
    # A second run of the same experiment: the world, the cached teacher and the student's
    # warm-up stages are on disk already (as after a kill during the rounds); only the
    # rounds and the evaluation are redone, and they are what this test is about.
    shutil.copytree(smoke / "world", tmp_path / "world")
    for stage in ("teacher_pretrain", "teacher_tune", "stage0", "stage1", "tune"):
        shutil.copytree(smoke / "checkpoints" / stage, tmp_path / "checkpoints" / stage)

    killed(tmp_path, "assess", 2)  # batch 1 of 3 saved, batch 2 judged but lost
    state = json.load(open(tmp_path / "distill" / "state.json"))
    assert (state["round"], state["phase"]) == (0, "assess")
    assert len(lines(tmp_path / "distill" / "round0_assess.jsonl")) == 4

    killed(tmp_path, "augment", 2)  # resumes the assessment, then dies with 2 new answers saved
    state = json.load(open(tmp_path / "distill" / "state.json"))
    assert (state["round"], state["phase"]) == (0, "augment")
    partial = lines(tmp_path / "distill" / "round0_augment.jsonl")
    assert 2 <= len(partial) < len(lines(smoke / "distill" / "round0_augment.jsonl"))

    train(tmp_path, TWO_ROUNDS)
    for name in ("train_pool.jsonl",):
        assert lines(tmp_path / "distill" / name) == lines(smoke / "distill" / name)
    by_id = lambda path: {r["id"]: r for r in lines(path)}
    for name in ("round0_assess.jsonl", "round0_augment.jsonl", "round1_assess.jsonl", "round1_augment.jsonl"):
        assert by_id(tmp_path / "distill" / name) == by_id(smoke / "distill" / name), name
    assert json.load(open(tmp_path / "distill" / "round0_selection.json")) == \
        json.load(open(smoke / "distill" / "round0_selection.json"))
    ours, reference = (json.load(open(d / "report" / "results.json"))["rounds"] for d in (tmp_path, smoke))
    assert len(ours) == 2
    assert [r["student_params_sha256"] for r in ours] == [r["student_params_sha256"] for r in reference]
    assert ours == reference  # scores, pool sizes, hard counts: the whole per-round report


def test_kd_rounds_score_train_and_resume_without_asking_again(smoke, tmp_path):
    """distill.kd=topk through the real run: our teacher server scores the pool's answers, the rounds
    train on them, and a run SIGKILLed right after its first stored scores asks for none of them
    again. (on_policy needs non-empty student answers, which the smoke student does not give: its
    loop, pipeline and loss are tested in tests/distill/test_kd_scores.py and tests/train/test_kd.py.)"""
    from comd_jax.distill import kd_scores

    shutil.copytree(smoke / "world", tmp_path / "world")
    for stage in ("teacher_pretrain", "teacher_tune", "stage0", "stage1", "tune"):
        shutil.copytree(smoke / "checkpoints" / stage, tmp_path / "checkpoints" / stage)
    flags = (TWO_ROUNDS, "--config.distill.kd=topk", "--config.distill.kd_top_k=8")
    scores_dir = tmp_path / "distill" / "teacher_scores"
    proc = launch(tmp_path, [os.path.join(REPO, "tests", "_killed_run.py"), "score", "1", "--"], *flags)
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-6000:])
    assert len(os.listdir(scores_dir)) == 1 and not (tmp_path / "distill" / "round0_train.json").exists()
    train(tmp_path, *flags)
    tunes = [h for h in json.load(open(tmp_path / "distill" / "state.json"))["history"] if h["phase"] == "tune"]
    assert len(tunes) == 2 and all(h["kd_scored"] > 0 and h["kd_only"] == 0 for h in tunes)
    stored = [key for name in sorted(os.listdir(scores_dir)) for key in kd_scores.read(str(scores_dir / name))]
    assert len(stored) == len(set(stored))  # no answer was scored twice
    for r, tune in enumerate(tunes):
        scored = kd_scores.read(str(tmp_path / "distill" / f"round{r}_train_kd.npz"))
        assert len(scored) == tune["kd_scored"]
        assert all(s.ids.shape[1] == 8 and s.logp.dtype.name == "float16" and s.mask.any() for s in scored.values())
    assert len(json.load(open(tmp_path / "report" / "results.json"))["rounds"]) == 2
