"""ScienceQA in LLaVA's eval format: prompts, leaderboard columns checked by hand, unparseable replies."""
import json
import os

import pytest

from comd_jax.eval import scienceqa
from comd_jax.eval.answerer import FixedAnswerer
from comd_jax.eval.suite import EvalSettings, run_benchmark

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval", "scienceqa")
QUESTIONS = os.path.join(FIXTURES, "llava_test_CQM-A.json")
PROBLEMS = os.path.join(FIXTURES, "problems.json")
REPLIES = {"Which colour is the square?": "The answer is B.",   # right
           "When is the market held?": "(B)",                     # wrong
           "Which word is a verb?": "C",                          # right
           "What colour is the leaf?": "I don't know.",           # unparseable -> wrong
           "Is the picture blue?": "A. yes"}                      # right


def _reply(request):
    prompt = request.messages[-1][1]
    return next(reply for question, reply in REPLIES.items() if question in prompt)


def test_prompt_image_first_suffix_last():
    question = json.load(open(QUESTIONS))[0]
    prompt = scienceqa.build_prompt(question)
    assert prompt.startswith("<image>\nContext: N/A\nWhich colour")
    assert prompt.endswith("\nC. green\n" + scienceqa.SUFFIX)
    assert prompt.count("<image>") == 1
    text_only = json.load(open(QUESTIONS))[1]
    assert "<image>" not in scienceqa.build_prompt(text_only)


def test_leaderboard_columns_by_hand():
    result = scienceqa.evaluate_scienceqa(FixedAnswerer(_reply), QUESTIONS, PROBLEMS, FIXTURES)
    s = result["scores"]
    # p1 NAT IMG G1-6 right; p2 SOC TXT G7-12 wrong; p3 LAN NO G1-6 right;
    # p4 NAT TXT IMG G7-12 unparseable; p5 SOC IMG G1-6 right.
    expected = {"average": 60.0, "NAT": 50.0, "SOC": 50.0, "LAN": 100.0, "TXT": 0.0, "IMG": 200 / 3,
                "NO": 100.0, "G1-6": 100.0, "G7-12": 0.0}
    assert s == pytest.approx(expected)
    assert result["table"]["IMG"] == {"correct": 2, "total": 3, "accuracy": pytest.approx(200 / 3)}
    assert result["unparseable"] == [{"id": "p4", "reply": "I don't know."}]
    assert [r["letter"] for r in result["records"]] == ["B", "B", "C", None, "A"]


def test_images_are_passed_with_their_requests():
    seen = []
    scienceqa.evaluate_scienceqa(FixedAnswerer(lambda r: seen.append(r) or "A"), QUESTIONS, PROBLEMS, FIXTURES)
    assert [len(r.images) for r in seen] == [1, 0, 0, 1, 1]
    assert all(os.path.isfile(path) for r in seen for path in r.images)


def test_empty_column_is_none_not_zero():
    table = scienceqa.leaderboard([{"correct": True, "columns": ["NAT", "NO", "G1-6"]}])
    assert table["SOC"] == {"correct": 0, "total": 0, "accuracy": None}


def test_run_benchmark_writes_json_and_markdown(tmp_path):
    settings = EvalSettings(question_file=QUESTIONS, problems_file=PROBLEMS, image_folder=FIXTURES)
    result = run_benchmark("scienceqa", {"student": FixedAnswerer(_reply), "teacher": FixedAnswerer("A")},
                           settings, str(tmp_path))
    assert result["models"]["teacher"]["scores"]["average"] == pytest.approx(40.0)  # p2, p5 are A
    saved = json.load(open(tmp_path / "scienceqa.json"))
    assert saved["models"]["student"]["scores"]["G1-6"] == 100.0
    table = open(tmp_path / "scienceqa.md").read()
    assert "| average | 60.00 | 40.00 |" in table and "unparseable" in table


def test_missing_problem_is_an_error(tmp_path):
    (tmp_path / "problems.json").write_text("{}")
    with pytest.raises(KeyError, match="no problem"):
        scienceqa.evaluate_scienceqa(FixedAnswerer("A"), QUESTIONS, str(tmp_path / "problems.json"))
