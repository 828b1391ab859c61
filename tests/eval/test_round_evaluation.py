"""config.eval.benchmarks inside a CoMD run: checked before any compute, every result kept on
disk as it finishes (a rerun computes only what is missing), the teacher scored over HTTP
through the same evaluators, and results.json in the shape the issue names."""
import json
import os
from types import SimpleNamespace

import pytest

from comd_jax import config as config_lib


def _config(kind="llava_json", **eval_fields):
    config = config_lib.preset("smoke")
    config.data.kind = kind
    config.eval.update(eval_fields)
    return config


def _scienceqa_files(root):
    questions = [{"id": str(i), "conversations": [{"from": "human", "value": f"Question {i}?\nA. yes\nB. no"}]}
                 for i in range(4)]
    questions[0]["image"] = "q0.png"
    problems = {str(i): {"choices": ["yes", "no"], "answer": i % 2, "hint": "", "image": "q0.png" if i == 0 else None,
                         "subject": "natural science", "grade": "grade3"} for i in range(4)}
    (root / "questions.json").write_text(json.dumps(questions))
    (root / "problems.json").write_text(json.dumps(problems))
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "q0.png")
    return root / "questions.json", root / "problems.json"


def test_eval_section_refuses_bad_benchmarks_and_missing_files_by_name(tmp_path):
    from comd_jax.distill.evaluation import eval_section

    with pytest.raises(ValueError, match=r"config.eval.benchmarks: unknown \['mmlu'\]"):
        eval_section(_config(benchmarks=("mmlu",)))
    with pytest.raises(ValueError, match="'world' scores the offline world.*'llava_json'"):
        eval_section(_config(benchmarks=("world",)))
    with pytest.raises(ValueError, match="set config.eval.scienceqa_questions"):
        eval_section(_config(benchmarks=("scienceqa",)))
    questions, problems = _scienceqa_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.eval.scienceqa_problems='/nope.json': no such file"):
        eval_section(_config(benchmarks=("scienceqa",), scienceqa_questions=str(questions),
                             scienceqa_problems="/nope.json"))
    with pytest.raises(FileNotFoundError, match="config.eval.scienceqa_images='/no/folder': no such folder"):
        eval_section(_config(benchmarks=("scienceqa",), scienceqa_questions=str(questions),
                             scienceqa_problems=str(problems), scienceqa_images="/no/folder"))
    section = eval_section(_config(benchmarks=("scienceqa",), scienceqa_questions=str(questions),
                                   scienceqa_problems=str(problems), scienceqa_images=str(tmp_path), limit=3))
    assert section.benchmarks == ("scienceqa",) and section.files.limit == 3
    assert section.max_new_tokens == config_lib.preset("smoke").distill.answer_max_tokens  # 0: the loop's length
    assert eval_section(_config(kind="world")).benchmarks == ("world",)


class Counting:
    """A benchmark that counts its computations and can be told to fail."""

    def __init__(self, value, settings=None):
        self.value, self.calls, self.fail = value, [], False
        self.settings = settings or {"limit": 5}

    def student(self, round_index, student):
        if self.fail:
            raise RuntimeError("killed here")
        self.calls.append(round_index)
        return {"scores": {"mean": self.value + round_index}}

    def teacher(self, answerer):
        self.calls.append("teacher")
        return {"scores": {"mean": answerer}}


def test_each_result_is_kept_as_it_finishes_and_a_rerun_computes_only_the_rest(tmp_path):
    from comd_jax.distill.evaluation import Evaluations

    a, b = Counting(10), Counting(20)
    evals = Evaluations(str(tmp_path), ("a", "b"), {"a": a, "b": b}, 16)
    b.fail = True
    with pytest.raises(RuntimeError, match="killed here"):
        evals.student(0, None)
    assert json.load(open(tmp_path / "eval" / "round0" / "a.json"))["result"] == {"scores": {"mean": 10}}
    assert not (tmp_path / "eval" / "round0" / "b.json").exists()

    a2, b2 = Counting(10), Counting(20)  # the rerun: a is loaded, only b computed
    rerun = Evaluations(str(tmp_path), ("a", "b"), {"a": a2, "b": b2}, 16)
    assert rerun.student(0, None) == {"a": {"scores": {"mean": 10}}, "b": {"scores": {"mean": 20}}}
    assert (a2.calls, b2.calls) == ([], [0])
    assert rerun.student(-1, None)["a"] == {"scores": {"mean": 9}}  # the baseline is its own file
    assert (tmp_path / "eval" / "baseline" / "a.json").exists()
    assert rerun.teacher(77) == {"a": {"scores": {"mean": 77}}, "b": {"scores": {"mean": 77}}}

    # Other settings (a limit, a generation length) are another result: recomputed, not reused.
    a3 = Counting(10, settings={"limit": 6})
    Evaluations(str(tmp_path), ("a",), {"a": a3}, 16).student(0, None)
    Evaluations(str(tmp_path), ("a",), {"a": a3}, 32).student(0, None)
    assert a3.calls == [0, 0]
    with pytest.raises(ValueError, match=r"\['c'\] not available here"):
        Evaluations(str(tmp_path), ("c",), {"a": a}, 16)


class FakeClient:
    """What the teacher endpoint's client offers the answerer: chat_many_sync."""

    def __init__(self, reply):
        self.reply, self.requests = reply, []

    def chat_many_sync(self, requests, skipped_ok=False):
        from comd_jax.serve.client import Choice

        self.requests += list(requests)
        return [[Choice(self.reply(messages))] for messages, _ in requests]


def test_endpoint_answerer_sends_turns_images_and_greedy_params(tmp_path):
    import base64

    from comd_jax.eval.answerer import Request
    from comd_jax.eval.endpoint_answerer import EndpointAnswerer

    _scienceqa_files(tmp_path)
    client = FakeClient(lambda messages: "  A  ")
    answerer = EndpointAnswerer(client, max_tokens=12)
    request = Request((("user", "<image>\nWhat colour?"), ("assistant", "Red."), ("user", "And its size?")),
                      (str(tmp_path / "q0.png"),))
    assert answerer.answer([request]) == ["A"] and answerer.answer([]) == []
    messages, params = client.requests[0]
    assert params == {"temperature": 0.0, "max_tokens": 12}
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    first = messages[0]["content"]
    assert first[0]["type"] == "image_url" and first[1] == {"type": "text", "text": "What colour?"}
    sent = base64.b64decode(first[0]["image_url"]["url"].split(",", 1)[1])
    assert sent == (tmp_path / "q0.png").read_bytes()
    assert messages[2]["content"] == [{"type": "text", "text": "And its size?"}]  # the image goes once


def test_teacher_over_http_scored_by_llava_rules_through_the_suite(tmp_path):
    from comd_jax.distill.evaluation import SuiteBenchmark, eval_section
    from comd_jax.eval.endpoint_answerer import EndpointAnswerer

    questions, problems = _scienceqa_files(tmp_path)
    section = eval_section(_config(benchmarks=("scienceqa",), scienceqa_questions=str(questions),
                                   scienceqa_problems=str(problems), scienceqa_images=str(tmp_path)))
    # Truth: A, B, A, B. The replies: right bare letter, right but lenient only, wrong, right sentence.
    replies = iter(["A", "(B)", "B", "The answer is B."])
    client = FakeClient(lambda messages: next(replies))
    result = SuiteBenchmark("scienceqa", section.files, image_folder=section.files.image_folder).teacher(
        EndpointAnswerer(client, max_tokens=8))
    assert result["scores"]["average"] == 50.0 and result["scores"]["average_lenient"] == 75.0
    assert result["scores"]["unparsed"] == 1 and result["scores"]["NAT"] == 50.0
    assert client.requests[0][0][0]["content"][0]["type"] == "image_url"  # question 0 has its image


def test_results_json_has_the_issue_shape_and_the_report_is_made_from_it(tmp_path):
    from comd_jax.distill.driver import round_results, write_report
    from comd_jax.distill.protocol import Kind

    state = {"history": [{"round": 0, "phase": "tune", "train_pool": 12}, {"round": 0, "phase": "assess"},
                         {"round": 0, "phase": "select", "hard": 3, "student_wins": 1, "excluded": 2},
                         {"round": 0, "phase": "augment", "added": 4, "dropped": {"too_short": 2}}]}
    student = SimpleNamespace(fingerprint=lambda r: f"{r:064d}")
    sqa = lambda avg: {"scienceqa": {"scores": {"average": avg, "NAT": avg, "unparsed": 0}, "records": []}}
    results = round_results(config_lib.preset("smoke"), state, student, ("scienceqa",), sqa(40.0), sqa(80.0),
                            [sqa(55.0)])
    write_report(str(tmp_path), Kind(pool=None, title="t", report={"pool_lint": {"ok": 3}}), results, [])
    written = json.load(open(tmp_path / "report" / "results.json"))
    assert written["benchmarks"] == ["scienceqa"]
    assert written["teacher"] == {"scienceqa": {"average": 80.0, "NAT": 80.0, "unparsed": 0}}
    assert written["baseline"]["scienceqa"]["average"] == 40.0 and written["pool_lint"] == {"ok": 3}
    (r0,) = written["rounds"]
    assert r0 == {"round": 0, "student": {"scienceqa": {"average": 55.0, "NAT": 55.0, "unparsed": 0}},
                  "pool_size": 12, "hard": 3, "student_wins": 1, "added": 4, "verdicts_excluded": 2,
                  "judge_skipped": {}, "dropped": {"too_short": 2}, "student_params_sha256": "0" * 64, "student_image_reliance": None}
    report = (tmp_path / "report" / "report.md").read_text()
    assert "scienceqa/average" in report and "baseline" in report
    assert os.path.getsize(tmp_path / "report" / "score_by_round.png") > 0


def test_llava_bench_is_judged_through_the_judge_endpoint_with_the_reference_first(tmp_path):
    from comd_jax.distill.evaluation import eval_section, suite_benchmarks
    from comd_jax.eval.endpoint_answerer import EndpointAnswerer
    from comd_jax.serve.client import Choice, ClientConfig

    rows = [{"question_id": i, "image": "", "text": f"Tell me {i}.", "category": c}
            for i, c in enumerate(["conversation", "detail"])]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"question_id": i, "text": f"ref {i}"}) + "\n"
                                              for i in range(2)))
    section = eval_section(_config(benchmarks=("llava_bench",), llava_bench_questions=str(tmp_path / "q.jsonl"),
                                   llava_bench_answers=str(tmp_path / "a.jsonl")))
    assert section.llava_bench_images == str(tmp_path)  # default: the questions' folder
    seen = []

    class Judge:  # the judge endpoint's ChatClient
        config = ClientConfig(base_url="http://judge:1/v1", model="gpt-x", api_key="k")

        async def chat(self, messages, **params):
            seen.append((messages[-1]["content"], params))
            return [Choice("8 6\nAssistant 1 is more detailed.")]

    bench = suite_benchmarks(section, Judge(), judge_max_tokens=300)["llava_bench"]()
    assert bench.settings["judge"] == ["http://judge:1/v1", "gpt-x"]
    result = bench.teacher(EndpointAnswerer(FakeClient(lambda messages: "cand"), max_tokens=8))
    assert result["scores"]["all"] == 75.0 and result["scores"]["detail"] == 75.0
    assert {p["max_tokens"] for _, p in seen} == {300} and {p["temperature"] for _, p in seen} == {0.2}
    seen = [text for text, _ in seen]
    assert "[Context]\n\n\n[Question]\nTell me 1." in seen[1] and "few sentences describing" in seen[1]
    assert all(s.index("ref ") < s.index("cand") for s in seen)  # the reference is Assistant 1
