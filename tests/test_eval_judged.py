"""LLaVA-Bench-shaped judged scores through a fake OpenAI-compatible judge on 127.0.0.1."""
import http.server
import json
import os
import re
import threading

import pytest

from comd_jax.eval import judge as judge_lib
from comd_jax.eval.answerer import FixedAnswerer
from comd_jax.eval.judged import evaluate_judged, load_bench
from comd_jax.eval.suite import EvalSettings, run_benchmark

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval", "llava_bench")
FILES = {k: os.path.join(FIXTURES, f) for k, f in
         (("q", "questions.jsonl"), ("a", "answers_gpt4.jsonl"), ("c", "context.jsonl"))}
CANDIDATES = {"What is in the picture?": "It is yellow.", "Describe the picture in detail.": "A square.",
              "Why might someone paint a wall yellow?": "Because yellow is bright.",
              "What colour dominates the picture?": "Yellow.", "Write a poem about the picture.": "Roses are red."}


def _section(text, name):
    return re.search(rf"\[{re.escape(name)}\]\n(.*?)\n\n\[", text, re.S).group(1)


class FakeJudge(http.server.BaseHTTPRequestHandler):
    """Scores an answer 8 if it mentions yellow, else 4. The poem question is never
    answered readably; the 'dominates' question is garbled on its first try."""
    calls: dict = {}
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        type(self).seen.append((self.path, body))
        question = _section(user, "Question")
        type(self).calls[question] = type(self).calls.get(question, 0) + 1
        scores = [8 if "yellow" in _section(user, f"Assistant {i}").lower() else 4 for i in (1, 2)]
        if "poem" in question or ("dominates" in question and type(self).calls[question] == 1):
            content = "Both answers have merits."
        else:
            content = f"{scores[0]} {scores[1]}\nAssistant 1 is accurate; Assistant 2 is less so."
        reply = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, *args):
        pass


@pytest.fixture()
def judge_url():
    FakeJudge.calls, FakeJudge.seen = {}, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _candidate(request):
    return CANDIDATES[request.messages[-1][1].removeprefix("<image>\n")]


def test_load_bench_joins_references_and_context():
    items = load_bench(FILES["q"], FILES["a"], FILES["c"])
    assert [i.category for i in items] == ["conversation", "detail", "complex", "conversation", "complex"]
    assert items[3].reference == "Yellow." and items[0].context.startswith("A 10 by 10")


def test_relative_scores_by_category(judge_url):
    items = load_bench(FILES["q"], FILES["a"], FILES["c"])
    judge = judge_lib.OpenAIJudge(judge_url, "fake-judge")
    result = evaluate_judged(FixedAnswerer(_candidate), items, judge, FIXTURES, retries=2)
    t = result["table"]
    assert t["conversation"]["relative"] == pytest.approx(100.0)   # (8, 8) twice
    assert t["detail"]["relative"] == pytest.approx(50.0)          # (8, 4)
    assert t["complex"] == {"relative": pytest.approx(100.0), "reference": 80.0, "candidate": 80.0,
                            "judged": 1, "unparseable": 1}         # the poem is excluded, not scored 0
    assert t["all"]["relative"] == pytest.approx(100 * 7 / 8)      # mean 7 vs mean 8 over 4 judged
    assert (t["all"]["reference"], t["all"]["candidate"]) == (80.0, 70.0)
    assert FakeJudge.calls["Write a poem about the picture."] == 3  # retried twice
    assert FakeJudge.calls["What colour dominates the picture?"] == 2
    [bad] = result["unparseable"]
    assert bad["question_id"] == "4" and len(bad["judge_raw"]) == 3
    dominated = next(r for r in result["records"] if r["question_id"] == "3")
    assert dominated["judge_raw"][0] == "Both answers have merits." and dominated["candidate_score"] == 8
    path, body = FakeJudge.seen[0]
    assert path == "/v1/chat/completions" and body["model"] == "fake-judge"
    assert "[Context]\nA 10 by 10 pixel image, entirely yellow." in body["messages"][-1]["content"]


def test_run_benchmark_through_settings(judge_url, tmp_path):
    settings = EvalSettings(bench_questions=FILES["q"], bench_answers=FILES["a"], bench_context=FILES["c"],
                            image_folder=FIXTURES, judge_url=judge_url, judge_model="fake", limit=2)
    result = run_benchmark("llava_bench", {"student": FixedAnswerer(_candidate)}, settings, str(tmp_path))
    assert result["models"]["student"]["scores"] == pytest.approx(
        {"conversation": 100.0, "detail": 50.0, "all": 75.0})
    assert json.load(open(tmp_path / "llava_bench.json"))["models"]["student"]["records"][0]["judge_raw"]


class PositionBiased:
    """A JudgeClient stub: +2 for whichever answer comes first."""

    def complete(self, messages):
        user = messages[-1]["content"]
        first, second = (_section(user, f"Assistant {i}") for i in (1, 2))
        base = {"good": 6, "bad": 3}
        return f"{base[first] + 2} {base[second]}\nfirst is better"


def test_swap_cancels_position_bias():
    items = load_bench(FILES["q"], FILES["a"])[:1]
    items = [type(items[0])(**{**items[0].__dict__, "reference": "good"})]
    plain = evaluate_judged(FixedAnswerer("bad"), items, PositionBiased())
    swapped = evaluate_judged(FixedAnswerer("bad"), items, PositionBiased(), swap=True)
    assert plain["records"][0]["reference_score"] == 8 and plain["records"][0]["candidate_score"] == 3
    assert swapped["records"][0]["reference_score"] == 7 and swapped["records"][0]["candidate_score"] == 4
    assert len(swapped["records"][0]["judge_raw_swapped"]) == 1


@pytest.mark.parametrize("text, scores", [
    ("8 7\nexplanation", (8, 7)), ("**9, 6**\nwhy", (9, 6)), ("10 1", (10, 1)), ("7.5 6.5\n", (7.5, 6.5)),
    ("Assistant 1: 8\nAssistant 2: 5\nBecause...", (8, 5)),
    ("Both are fine.", None), ("8\nmore", None), ("11 3", None), ("0 5", None), ("", None),
])
def test_parse_scores(text, scores):
    assert judge_lib.parse_scores(text) == scores
