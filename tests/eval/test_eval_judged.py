"""LLaVA-Bench-shaped judged scores through a fake OpenAI-compatible judge on 127.0.0.1."""
import http.server
import json
import os
import re
import threading

import pytest

from comd_jax.eval import judge as judge_lib
from comd_jax.eval.answerer import FixedAnswerer
from comd_jax.eval.judged import evaluate_judged, judge_for, load_bench
from comd_jax.serve.client import Choice
from comd_jax.eval.suite import EvalSettings, run_benchmark
from tests._paths import FIXTURES as TEST_FIXTURES

FIXTURES = os.path.join(TEST_FIXTURES, "eval", "llava_bench")
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
    judge = judge_for(judge_url, "fake-judge", retries=2)
    result = evaluate_judged(FixedAnswerer(_candidate), items, judge, FIXTURES)
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
    assert "[Context]\nA 10 by 10 pixel image, entirely yellow.\n\n[Question]" in body["messages"][-1]["content"]
    assert body["temperature"] == 0.2 and body["messages"][0]["content"].startswith("You are a helpful and precise")


def test_run_benchmark_through_settings(judge_url, tmp_path):
    settings = EvalSettings(bench_questions=FILES["q"], bench_answers=FILES["a"], bench_context=FILES["c"],
                            image_folder=FIXTURES, judge_url=judge_url, judge_model="fake", limit=2)
    result = run_benchmark("llava_bench", {"student": FixedAnswerer(_candidate)}, settings, str(tmp_path))
    assert result["models"]["student"]["scores"] == pytest.approx(
        {"conversation": 100.0, "detail": 50.0, "all": 75.0})
    assert json.load(open(tmp_path / "llava_bench.json"))["models"]["student"]["records"][0]["judge_raw"]


class PositionBiased:
    """A judge endpoint (ChatClient) that gives +2 to whichever answer comes first."""

    async def chat(self, messages, **params):
        user = messages[-1]["content"]
        first, second = (_section(user, f"Assistant {i}") for i in (1, 2))
        base = {"good": 6, "bad": 3}
        return [Choice(f"{base[first] + 2} {base[second]}\nfirst is better")]


def test_swap_cancels_position_bias():
    items = load_bench(FILES["q"], FILES["a"])[:1]
    items = [type(items[0])(**{**items[0].__dict__, "reference": "good"})]
    judge = judge_lib.PairwiseJudge(PositionBiased())
    plain = evaluate_judged(FixedAnswerer("bad"), items, judge)
    swapped = evaluate_judged(FixedAnswerer("bad"), items, judge, swap=True)
    assert plain["records"][0]["reference_score"] == 8 and plain["records"][0]["candidate_score"] == 3
    assert swapped["records"][0]["reference_score"] == 7 and swapped["records"][0]["candidate_score"] == 4
    assert len(swapped["records"][0]["judge_raw"]) == 2


@pytest.mark.parametrize("text, scores", [
    # LLaVA-Bench's first line
    ("8 7\nexplanation", (8, 7)), ("**9, 6**\nwhy", (9, 6)), ("10 1", (10, 1)), ("7.5 6.5\n", (7.5, 6.5)),
    ("8/10 6/10\nwhy", (8, 6)),
    # Lion's score lines, after the explanation; the last mention of each wins
    ("The first is vague.\nScore of Assistant 1: 3\nScore of Assistant 2: 8", (3, 8)),
    ("Quoting 'Score of Assistant 1: 2' from the rubric...\nScore of Assistant 1: 6.5\nScore of Assistant 2: 4",
     (6.5, 4)),
    # markdown, as hosted judges write it
    ("**Score of Assistant 1:** 8\n**Score of Assistant 2:** 6", (8, 6)),
    ("### Scores\n- **Score of Assistant 1**: 7/10\n- **Score of Assistant 2**: 9/10", (7, 9)),
    ("Score of Assistant 1: **5**\nScore of Assistant 2: **6** (more detailed)", (5, 6)),
    ("1. Score of Assistant 1: 4\n2. Score of Assistant 2: 9", (4, 9)),
    ("Score of Assistant 1: 8; Score of Assistant 2: 3", (8, 3)),
    ("Assistant 1: 8/10\nAssistant 2: 5/10\nBecause...", (8, 5)),
    ("Assistant 1's score: 6\nAssistant 2's score: 7", (6, 7)),
    # numbers in the prose are not scores
    ("Assistant 1 lists 3 objects, while Assistant 2 lists 2.", None),
    ("Assistant 1 lists 3 objects.\nAssistant 2 lists 2.\nBoth are fine.", None),
    ("Assistant 1: 3 objects listed\nAssistant 2: 2 objects listed", None),
    ("Score of Assistant 1: 8", None),  # one score is no verdict
    ("Both are fine.", None), ("8\nmore", None), ("11 3", None), ("0 5", None), ("", None), (None, None),
    ("Score of Assistant 1: 0\nScore of Assistant 2: 11", None),  # off the 1-10 scale
    ("I'd give 8 7 points for style\nand more", None),
])
def test_parse_scores(text, scores):
    assert judge_lib.parse_scores(text) == scores


def test_coco_context_is_captions_then_boxes_with_llava_s_coco_rule(tmp_path):
    (tmp_path / "q.jsonl").write_text(json.dumps({"question_id": 7, "image": "c.jpg", "text": "What is it?",
                                                  "category": "detail"}) + "\n")
    (tmp_path / "a.jsonl").write_text(json.dumps({"question_id": 7, "text": "A dog."}) + "\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({
        "image": "c.jpg", "captions": ["A dog on grass.", "A brown dog."],
        "instances": [{"category": "dog", "bbox": [0.1, 0.2, 0.5, 0.9]}]}) + "\n")
    [item] = load_bench(str(tmp_path / "q.jsonl"), str(tmp_path / "a.jsonl"), str(tmp_path / "c.jsonl"))
    assert (item.context, item.context_kind) == ("A dog on grass.\nA brown dog.\n\ndog: [0.1, 0.2, 0.5, 0.9]",
                                                 "coco")
    user = judge_lib.llava_bench_messages(item.question, "ref", "cand", item.context, item.category,
                                          item.context_kind)[-1]["content"]
    assert user.startswith("[Context]\nA dog on grass.\nA brown dog.\n\ndog: [0.1, 0.2, 0.5, 0.9]\n\n[Question]")
    assert "bounding box coordinates" in user and user.index("[Assistant 1]\nref") < user.index("cand")
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": "c.jpg", "caption": ["one.", "two."]}) + "\n")
    [item] = load_bench(str(tmp_path / "q.jsonl"), str(tmp_path / "a.jsonl"), str(tmp_path / "c.jsonl"))
    assert (item.context, item.context_kind) == ("one.\ntwo.", "caption")  # a list, not "['one.', 'two.']"


def test_bad_bench_files_are_refused_by_file_and_line(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"question_id": 1, "text": "x"}) + "\n")
    (tmp_path / "q.jsonl").write_text(json.dumps({"question_id": 1, "text": "?", "category": "poetry"}) + "\n")
    with pytest.raises(ValueError, match="category 'poetry' has no rule"):
        load_bench(str(tmp_path / "q.jsonl"), str(tmp_path / "a.jsonl"))
    (tmp_path / "q.jsonl").write_text(json.dumps({"question_id": 1, "text": "?"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"q.jsonl:2: not a JSON line"):
        load_bench(str(tmp_path / "q.jsonl"), str(tmp_path / "a.jsonl"))
    (tmp_path / "q.jsonl").write_text(json.dumps({"question_id": 1, "image": "z.jpg", "text": "?"}) + "\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": "y.jpg", "caption": "c"}) + "\n")
    with pytest.raises(ValueError, match=r"q.jsonl:1: image 'z.jpg' has no record in"):
        load_bench(str(tmp_path / "q.jsonl"), str(tmp_path / "a.jsonl"), str(tmp_path / "c.jsonl"))
    (tmp_path / "q.jsonl").write_text(json.dumps({"question_id": 1}) + "\n")
    with pytest.raises(ValueError, match=r"q.jsonl:1: no 'text' field"):
        load_bench(str(tmp_path / "q.jsonl"), str(tmp_path / "a.jsonl"))
