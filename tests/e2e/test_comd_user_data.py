"""CoMD on files laid out as a user has them, through the launcher, as a user types it:
a transformers student (init_from, its tokenizer and image processor inside), a
transformers teacher served by our server from `distill.teacher_checkpoint`, a
LLaVA JSONL pool with integer ids, JPEG images in nested folders, a multi-turn and
a text-only sample and one broken sample, and the pool's own answers as the judge.
Then a SIGKILL inside the assessment and a rerun must end where the first run did."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests._paths import REPO, launch_env

pytestmark = pytest.mark.e2e

ENV = launch_env()


def command(files, workdir):
    return [sys.executable, "launch/train.py", "--config=configs/comd.py:smoke", f"--workdir={workdir}",
            "--config.data.kind=llava_json", f"--config.init_from={files / 'student'}",
            "--config.stages=('stage1',)",
            f"--config.stage1.data={files / 'made_by_world' / 'llava' / 'captions.json'}",
            f"--config.stage1.eval_data={files / 'made_by_world' / 'llava' / 'captions.json'}",
            f"--config.distill.pool_data={files / 'pool.jsonl'}", f"--config.distill.image_folder={files / 'images'}",
            f"--config.distill.teacher_checkpoint={files / 'teacher'}", "--config.distill.judge=reference",
            "--config.distill.augmentor=llm", "--config.distill.pool_size=8", "--config.distill.rounds=2",
            "--config.eval.benchmarks=()"]


def lines(path):
    return [json.loads(line) for line in open(path)]


def test_user_files_run_end_to_end_and_resume_after_a_kill(user_files, tmp_path):
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("launch", "configs"):
        os.symlink(os.path.join(REPO, name), clone / name)
    env = dict(ENV)
    first = subprocess.run(command(user_files, "first"), cwd=clone, env=env, capture_output=True, text=True,
                           timeout=1200)
    assert first.returncode == 0, first.stderr[-6000:]
    assert "pool.jsonl: skipping 1 sample(s), missing_image: 2002" in first.stdout
    work = clone / "first"
    results = json.load(open(work / "report" / "results.json"))
    assert results["pool_lint"]["skipped"] == {"missing_image": 1} and results["pool_lint"]["ok"] == 12
    assert [r["round"] for r in results["rounds"]] == [0, 1]
    assert all(len(r["student_params_sha256"]) == 64 for r in results["rounds"])
    pool = {p["id"]: p for p in lines(work / "distill" / "train_pool.jsonl")}
    initial = [p for p in pool.values() if p["provenance"]["round"] == -1]
    assert len(initial) == 8 and all(isinstance(i, str) for i in pool)
    assert {p["provenance"]["answered_by"] for p in initial} <= {"teacher", "student"}
    # Every initial sample was answered by the teacher over HTTP, multi-turn ones with their context.
    assert all(p["reference"] for p in initial)
    assert pool["2000"]["instruction"] == "How many are there?" and len(pool["2000"]["context"]) == 2
    assert pool["2001"]["image"] is None  # text-only
    # The LLM augmentor's new instructions, answered by the teacher, joined the pool; the rest are counted.
    augmented = [p for p in pool.values() if p["provenance"].get("augmentor") == "llm"]
    assert sum(r["added"] for r in results["rounds"]) == len(augmented)
    check_augment_counts(work, results)
    assert json.load(open(work / "distill" / "pool_source.json"))["image_folder"] == str(user_files / "images")

    # The same run, killed after its first judged assessment batch, then typed again.
    killed = subprocess.run([sys.executable, os.path.join(REPO, "tests", "_killed_run.py"), "assess", "1", "--",
                             *command(user_files, "second")[2:]], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=1200)
    assert killed.returncode == -9, killed.stderr[-6000:]
    again = subprocess.run(command(user_files, "second"), cwd=clone, env=env, capture_output=True, text=True,
                           timeout=1200)
    assert again.returncode == 0, again.stderr[-6000:]
    second = json.load(open(clone / "second" / "report" / "results.json"))
    assert [r["student_params_sha256"] for r in second["rounds"]] == \
        [r["student_params_sha256"] for r in results["rounds"]]
    assert lines(clone / "second" / "distill" / "train_pool.jsonl") == lines(work / "distill" / "train_pool.jsonl")

    # The images moved: a resume says where they were, before any compute.
    shutil.move(user_files / "images", user_files / "images_moved")
    try:
        moved = subprocess.run(command(user_files, "second"), cwd=clone, env=env, capture_output=True, text=True,
                               timeout=600)
    finally:
        shutil.move(user_files / "images_moved", user_files / "images")
    assert moved.returncode != 0
    assert "config.distill.image_folder" in moved.stderr and "this run started with" in moved.stderr


class FakeJudge:
    """A GPT-4-class judge stand-in on localhost: an OpenAI chat endpoint whose two scores are a
    hash of the request, so they vary from item to item and a rerun gets the same verdicts."""

    def __init__(self):
        import hashlib
        import http.server
        import threading

        asked = self.asked = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"object": "list", "data": [{"id": "judge-4", "object": "model"}]})

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                asked.append(request["model"])
                h = int(hashlib.sha256(json.dumps(request["messages"]).encode()).hexdigest(), 16)
                text = f"{3 + h % 7} {3 + (h // 7) % 7}\nAssistant 1 is more precise."
                self._send({"id": "x", "object": "chat.completion", "model": request["model"], "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


DROP_REASONS = {"truncated", "too_short", "echoes_prompt", "answer_not_instruction", "near_duplicate",
                *(f"{who}_{why}" for who in ("creator", "teacher")
                  for why in ("image_rejected", "content_null", "not_json", "no_choices"))}


def check_augment_counts(work, results):
    """Every instruction the teacher was asked for is pooled or counted as dropped, by reason (a
    random tiny teacher writes mostly non-instructions; tests/e2e/test_flaky_endpoint.py sees real ones
    pooled)."""
    state = json.load(open(work / "distill" / "state.json"))
    per_seed = json.load(open(work / "config.json"))["distill"]["per_seed"]
    augments = [h for h in state["history"] if h["phase"] == "augment"]
    assert len(augments) == len(results["rounds"]) and all(a["seeds"] >= 1 for a in augments)
    for a, r in zip(augments, results["rounds"]):
        assert a["seeds"] * per_seed == r["added"] + sum(r["dropped"].values()) and r["dropped"] == a["dropped"]
        assert set(r["dropped"]) <= DROP_REASONS


def paper_command(files, workdir, judge_url):
    """configs/comd.py:paper on the user's files, with step counts and lengths a CPU runs in seconds;
    every other flag is the README's "Bring your own" command."""
    sqa = files / "scienceqa"
    tiny = [f"--config.{s}.{k}={v}" for s in ("stage1", "round_tune")
            for k, v in (("total_steps", 2), ("global_batch", 4), ("grad_accum_steps", 1), ("save_every", 1),
                         ("log_every", 1))]
    return [sys.executable, "launch/train.py", "--config=configs/comd.py:paper", f"--workdir={workdir}",
            f"--config.init_from={files / 'student'}",
            f"--config.stage1.data={files / 'made_by_world' / 'llava' / 'captions.json'}",
            f"--config.stage1.image_folder={files / 'made_by_world' / 'llava'}",
            f"--config.distill.pool_data={files / 'pool.jsonl'}", f"--config.distill.image_folder={files / 'images'}",
            f"--config.distill.teacher_checkpoint={files / 'teacher'}", "--config.distill.teacher_model=tiny-teacher",
            "--config.distill.judge=llm", "--config.distill.augmentor=llm",
            f"--config.distill.judge_url={judge_url}", "--config.distill.judge_model=judge-4",
            "--config.eval.benchmarks=('scienceqa',)", f"--config.eval.scienceqa_questions={sqa / 'questions.json'}",
            f"--config.eval.scienceqa_problems={sqa / 'problems.json'}",
            f"--config.eval.scienceqa_images={sqa}",
            *tiny, "--config.stage1.length_buckets=(48,)", "--config.round_tune.length_buckets=(128,)",
            "--config.model.dtype=float32", "--config.teacher.dtype=float32", "--config.teacher.param_dtype=float32",
            "--config.distill.rounds=2", "--config.distill.pool_size=8", "--config.distill.max_new_per_round=4",
            "--config.distill.answer_max_tokens=8", "--config.distill.concurrency=4", "--config.distill.gen_batch=4",
            "--config.distill.assess_chunk=4", "--config.eval.limit=6"]


def test_paper_preset_on_user_files_with_llm_judge_and_scienceqa_resumes_after_a_kill(user_files, tmp_path):
    from comd_jax.data.synthetic import world
    from comd_jax.eval.world_scienceqa import export_scienceqa

    export_scienceqa(world.WorldSpec(seed=5, num_captions=32, num_instructions=24, num_heldout=60),
                     str(user_files / "scienceqa"))
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("launch", "configs"):
        os.symlink(os.path.join(REPO, name), clone / name)
    env = dict(ENV)
    judge = FakeJudge()
    try:
        first = subprocess.run(paper_command(user_files, "first", judge.url), cwd=clone, env=env,
                               capture_output=True, text=True, timeout=900)
        assert first.returncode == 0, first.stderr[-6000:]
        asked_first = len(judge.asked)
        killed = subprocess.run([sys.executable, os.path.join(REPO, "tests", "_killed_run.py"), "assess", "1", "--",
                                 *paper_command(user_files, "second", judge.url)[2:]], cwd=clone, env=env,
                                capture_output=True, text=True, timeout=900)
        assert killed.returncode == -9, killed.stderr[-6000:]
        again = subprocess.run(paper_command(user_files, "second", judge.url), cwd=clone, env=env,
                               capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stderr[-6000:]
    finally:
        judge.close()
    assert asked_first and set(judge.asked) == {"judge-4"}  # the judge endpoint, not the teacher, judged
    work = clone / "first"
    results = json.load(open(work / "report" / "results.json"))
    assert results["benchmarks"] == ["scienceqa"]
    for scores in [results["teacher"]["scienceqa"], results["baseline"]["scienceqa"],
                   *(r["student"]["scienceqa"] for r in results["rounds"])]:
        assert {"average", "average_lenient", "unparsed", "NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6",
                "G7-12"} <= set(scores)
    kept = json.load(open(work / "eval" / "teacher" / "scienceqa.json"))["result"]
    assert len(kept["records"]) == 6  # eval.limit: the teacher answered six questions over HTTP
    assert [r["round"] for r in results["rounds"]] == [0, 1]
    r0 = results["rounds"][0]
    assert r0["pool_size"] >= 7 and r0["verdicts_excluded"] == 0 and r0["hard"] + r0["student_wins"] >= 1
    check_augment_counts(work, results)
    assert results["student_stages"] and results["pool_lint"]["ok"] == 12
    for name in ("report.md", "score_by_round.png"):
        assert (work / "report" / name).stat().st_size > 0
    snapshot = json.load(open(work / "config.json"))
    assert snapshot["model"]["text"]["hidden_size"] == 64  # the student's architecture is its checkpoint's

    second = json.load(open(clone / "second" / "report" / "results.json"))
    assert [r["student_params_sha256"] for r in second["rounds"]] == \
        [r["student_params_sha256"] for r in results["rounds"]]
    assert second["rounds"] == results["rounds"] and second["teacher"] == results["teacher"]
    assert lines(clone / "second" / "distill" / "train_pool.jsonl") == lines(work / "distill" / "train_pool.jsonl")
