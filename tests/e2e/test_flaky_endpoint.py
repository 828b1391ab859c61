"""The paper preset against endpoints that behave like real ones, through the launcher.

A: one scripted OpenAI-compatible server on loopback is both the teacher (answers and the
instruction creator) and a GPT-4-class judge, each behind its own bearer key. It answers
the first request with 503, writes verdicts in four real-world shapes and some it never
makes parseable, and cuts some new instructions off at max_tokens. The run must end with
exactly the counts the endpoint caused, and no key may reach a file under WORKDIR.

B: our server as the teacher, started on a checkpoint with a key, and a judge that rejects
one request with a 400: the run stops with the judge's message and request id, no process's
command line ever holds the key, and a rerun against a fixed judge resumes and finishes."""
import hashlib
import http.server
import json
import os
import secrets
import subprocess
import threading
import time

import pytest

from tests._paths import REPO
from tests.e2e.test_comd_user_data import ENV, check_augment_counts, lines, paper_command

pytestmark = pytest.mark.e2e

TEACHER, JUDGE = "teacher-13b", "judge-4"
WORDS = ("amber basalt cobalt dune ember fjord garnet harbor indigo jasper kelp lagoon meadow nickel onyx prairie "
         "quartz reef saffron tundra umber violet willow xenon yarrow zephyr acorn birch cedar delta estuary fern "
         "glacier heath iris juniper knoll larch marsh nectar oasis pebble quarry rapids summit thicket upland "
         "valley wharf yucca").split()


def _verdict(style: str, a: int, b: int) -> str:
    """What judges write, each with numbers in its prose that must never be read as scores."""
    return {
        "lion": f"Score of Assistant 1: {a}\nScore of Assistant 2: {b}\nAssistant 1 names 3 objects, Assistant 2 names 2.",
        "markdown": f"**Score of Assistant 1:** {a}\n**Score of Assistant 2:** {b}\n\nAssistant 2 misses 4 of the 5 shapes.",
        "out_of": f"Assistant 1: {a}/10\nAssistant 2: {b}/10",
        "pair": f"{a} {b}\nAssistant 1 is more precise; it counts 2 circles.",
        "unparseable": "Both assistants mention 2 shapes and 1 colour; I cannot say which of the 2 is better.",
    }[style]


STYLES = ("lion", "markdown", "unparseable", "out_of", "pair")


class FlakyEndpoint:
    """The scripted server. Everything it did is logged for the test to compare with the run."""

    def __init__(self, teacher_key: str, judge_key: str, *, reject_when=None):
        self.lock = threading.Lock()
        self.log = {"posts": 0, "unavailable": 0, "unauthorized": 0, "rejected": 0, "judge": 0,
                    "sent_styles": {}, "verdicts": {}, "creator": 0, "truncated_by_round": {},
                    "instructions_by_round": {}, "answers": 0}
        self.styles = {}  # a prompt keeps its style across retries and reruns
        keys = {TEACHER: teacher_key, JUDGE: judge_key}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in keys]})

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, body, headers = outer.answer(request, self.headers.get("Authorization", ""), keys)
                self._send(status, body, headers)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        # Reject the first judge request after a pause this long: a later chunk or round than the
        # first, so that some verdicts are on disk when the run stops.
        self.reject_when = reject_when  # () -> bool: reject the judge request that finds it true, once
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()

    @staticmethod
    def _completion(model, choices):
        return {"id": "cmpl-" + secrets.token_hex(4), "object": "chat.completion", "model": model, "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
            for i, (text, reason) in enumerate(choices)]}

    def answer(self, request, authorization, keys):
        log, model = self.log, request.get("model")
        with self.lock:
            log["posts"] += 1
            if log["posts"] == 1:  # a busy node's first answer
                log["unavailable"] += 1
                return 503, {"error": {"message": "the engine is loading, try again"}}, [("Retry-After", "0")]
            if model not in keys or authorization != f"Bearer {keys[model]}":
                log["unauthorized"] += 1
                return 401, {"error": {"message": f"invalid API key for model {model!r}",
                                       "type": "invalid_request_error"}}, [("x-request-id", "req-auth")]
            text = "\n".join(p.get("text", "") if isinstance(p, dict) else "" for m in request["messages"]
                             for p in (m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}]))
            digest = hashlib.sha256(json.dumps(request["messages"]).encode()).digest()
            if model == JUDGE:
                log["judge"] += 1
                if self.reject_when and not log["rejected"] and self.reject_when():
                    log["rejected"] += 1
                    return 400, {"error": {"message": "This model's maximum context length is 8192 tokens; your "
                                           "messages resulted in 9120 tokens.", "type": "invalid_request_error",
                                           "param": "messages"}}, [("x-request-id", "req-7c1f0e2a")]
                style = self.styles.setdefault(digest, STYLES[len(self.styles) % len(STYLES)])
                a, b = 1 + digest[0] % 10, 1 + digest[1] % 10
                reply = _verdict(style, a, b)
                log["sent_styles"][style] = log["sent_styles"].get(style, 0) + 1
                log["verdicts"][reply] = (a, b) if style != "unparseable" else None
                return 200, self._completion(model, [(reply, "stop")]), []
            if "act as an Instruction Creator" in text:
                log["creator"] += 1
                r = str(request["seed"] // 1_000_003)
                digest = hashlib.sha256(digest + str(request["seed"]).encode()).digest()  # sampled: seed matters
                out = []
                for i in range(request.get("n", 1)):
                    if (log["creator"] + i) % 2:  # cut off at max_tokens, mid-sentence
                        log["truncated_by_round"][r] = log["truncated_by_round"].get(r, 0) + 1
                        out.append(("Describe how the cobalt shape in the upper", "length"))
                    else:
                        w = [WORDS[(d + 7 * k) % len(WORDS)] for k, d in enumerate(digest[2 + 9 * i:11 + 9 * i])]
                        log["instructions_by_round"][r] = log["instructions_by_round"].get(r, 0) + 1
                        out.append((f"Explain how the {w[0]} {w[1]} {w[2]} compares with {w[3]} {w[4]} {w[5]} "
                                    f"{w[6]} and {w[7]}?", "stop"))
                return 200, self._completion(model, out), []
            log["answers"] += 1
            return 200, self._completion(model, [(f"A {WORDS[digest[0] % len(WORDS)]} shape.", "stop")]), []


def _clone(tmp_path):
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("launch", "configs"):
        os.symlink(os.path.join(REPO, name), clone / name)
    return clone


def _command(files, workdir, judge_url, teacher_url=None):
    """The paper preset as the user-data test types it, without benchmarks (their own tests
    cover them), and against `teacher_url` instead of our server when one is given."""
    dropped = ("--config.eval.", "--config.distill.teacher_model=")
    if teacher_url:
        dropped += ("--config.distill.teacher_checkpoint=",)
    cmd = [a for a in paper_command(files, workdir, judge_url) if not a.startswith(dropped)]
    cmd += ["--config.eval.benchmarks=()"]
    if teacher_url:
        cmd += [f"--config.distill.teacher_url={teacher_url}", f"--config.distill.teacher_model={TEACHER}"]
    else:
        cmd += ["--config.distill.teacher_model=tiny-teacher"]
    return cmd


def _no_key_under(root, *keys):
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            data = open(path, "rb").read()
            found += [f"{path} holds key {k[:6]}..." for k in keys if k.encode() in data]
    return found


def test_paper_preset_survives_a_flaky_teacher_and_judge_and_counts_what_they_did(user_files, tmp_path):
    teacher_key, judge_key = "sk-teach-" + secrets.token_hex(16), "sk-judge-" + secrets.token_hex(16)
    clone = _clone(tmp_path)
    env = {**ENV, "COMD_TEACHER_API_KEY": teacher_key,
           "OPENAI_API_KEY": judge_key}
    endpoint = FlakyEndpoint(teacher_key, judge_key)
    try:
        run = subprocess.run(_command(user_files, "work", endpoint.url, teacher_url=endpoint.url), cwd=clone,
                             env=env, capture_output=True, text=True, timeout=900)
    finally:
        endpoint.close()
    assert run.returncode == 0, run.stderr[-6000:]
    log, work = endpoint.log, clone / "work"
    assert log["unavailable"] == 1 and log["unauthorized"] == 0  # retried past the 503; both keys sent
    assert set(log["sent_styles"]) == set(STYLES), log["sent_styles"]
    results = json.load(open(work / "report" / "results.json"))
    assert [r["round"] for r in results["rounds"]] == [0, 1]

    # Verdicts: every parsed pair is the endpoint's (both orders averaged); an unparseable prompt was
    # asked three times (two retries), then its item excluded and counted, never scored.
    excluded = 0
    for r in (0, 1):
        for record in lines(work / "distill" / f"round{r}_assess.jsonl"):
            sent = [log["verdicts"][raw] for raw in record["raw"]]
            if record["scores"]["teacher"] is None:
                excluded += 1
                assert sent[-3:] == [None] * 3 and record["scores"]["student"] is None
            else:
                (f1, f2), (b1, b2) = sent
                assert record["scores"] == {"teacher": (f1 + b2) / 2, "student": (f2 + b1) / 2}
    assert excluded == log["sent_styles"]["unparseable"] // 3 > 0
    assert sum(r["verdicts_excluded"] for r in results["rounds"]) == excluded

    # New instructions: those cut at max_tokens dropped as truncated; the others pooled.
    check_augment_counts(work, results)
    for r in results["rounds"]:
        assert r["dropped"].get("truncated", 0) == log["truncated_by_round"].get(str(r["round"]), 0)
        assert r["added"] + r["dropped"].get("near_duplicate", 0) == log["instructions_by_round"].get(str(r["round"]), 0)
    assert sum(log["truncated_by_round"].values()) > 0 and sum(r["added"] for r in results["rounds"]) > 0
    pooled = [p for p in lines(work / "distill" / "train_pool.jsonl") if p["provenance"].get("augmentor") == "llm"]
    assert all(p["instruction"].startswith("<image>\nExplain how the ") for p in pooled) and len(pooled) == \
        sum(r["added"] for r in results["rounds"])

    assert _no_key_under(work, teacher_key, judge_key) == []
    assert teacher_key not in run.stdout + run.stderr and judge_key not in run.stdout + run.stderr


def _server_command_lines(stop, seen, workdir):
    """Our server children of the run in `workdir` (their --config names its config.json), as ps shows them."""
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "-m comd_jax.serve " in cmdline and str(workdir) in cmdline:
                seen[pid] = cmdline
        time.sleep(0.2)


def test_a_rejected_judge_request_stops_the_run_by_name_and_a_fixed_judge_resumes_it(user_files, tmp_path):
    teacher_key, judge_key = "sk-serve-" + secrets.token_hex(16), "sk-judge-" + secrets.token_hex(16)
    clone = _clone(tmp_path)
    env = {**ENV, "COMD_TEACHER_API_KEY": teacher_key,
           "OPENAI_API_KEY": judge_key}
    # Rejected once a judged chunk is on disk, so that the stop falls after a finished chunk
    # however fast the run goes (a warm compilation cache leaves no pauses to wait for).
    assessed = lambda: any(p.stat().st_size for p in (clone / "work" / "distill").glob("round*_assess.jsonl"))
    broken = FlakyEndpoint("unused", judge_key, reject_when=assessed)
    stop, seen = threading.Event(), {}
    watcher = threading.Thread(target=_server_command_lines, args=(stop, seen, clone / "work"), daemon=True)
    watcher.start()
    try:
        first = subprocess.run(_command(user_files, "work", broken.url), cwd=clone, env=env, capture_output=True,
                               text=True, timeout=900)
    finally:
        stop.set()
        watcher.join()
        broken.close()
    assert broken.log["rejected"] == 1 and broken.log["unauthorized"] == 0
    assert first.returncode != 0
    assert "maximum context length is 8192 tokens" in first.stderr and "req-7c1f0e2a" in first.stderr
    assert "rerun the same command to resume" in first.stderr and "Traceback" not in first.stderr
    # Our server child was started on the checkpoint with the key in its environment only.
    assert seen and all("--api_key_env=" in c and teacher_key not in c for c in seen.values()), seen
    work = clone / "work"
    assert not (work / "report" / "results.json").exists()
    judged = {p.name: lines(p) for p in (work / "distill").glob("round*_assess.jsonl")}
    assert sum(map(len, judged.values())) >= 1

    fixed = FlakyEndpoint("unused", judge_key)
    fixed.log["posts"] = 1  # no 503 this time: the judge is fixed
    try:
        again = subprocess.run(_command(user_files, "work", fixed.url), cwd=clone, env=env, capture_output=True,
                               text=True, timeout=900)
    finally:
        fixed.close()
    assert again.returncode == 0, again.stderr[-6000:]
    results = json.load(open(work / "report" / "results.json"))
    assert [r["round"] for r in results["rounds"]] == [0, 1]
    check_augment_counts(work, results)
    # The verdicts the first run wrote stand; the rerun judged only what was left.
    for name, records in judged.items():
        assert lines(work / "distill" / name)[:len(records)] == records
    assert _no_key_under(work, teacher_key, judge_key) == []
