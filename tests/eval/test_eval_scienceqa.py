"""ScienceQA in LLaVA's eval format: prompts, leaderboard columns checked by hand, unparseable replies."""
import json
import os

import pytest

from comd_jax.eval import scienceqa
from comd_jax.eval.answerer import FixedAnswerer
from tests._paths import FIXTURES as TEST_FIXTURES
from comd_jax.eval.suite import EvalSettings, run_benchmark

FIXTURES = os.path.join(TEST_FIXTURES, "eval", "scienceqa")
QUESTIONS = os.path.join(FIXTURES, "llava_test_CQM-A.json")
PROBLEMS = os.path.join(FIXTURES, "problems.json")
REPLIES = {"Which colour is the square?": "The answer is B.",   # right
           "When is the market held?": "(B)",                     # unparsed by LLaVA's rules -> wrong
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
    assert s == pytest.approx({**expected, "average_lenient": 60.0, "unparsed": 2})
    assert result["table"]["IMG"] == {"correct": 2, "total": 3, "accuracy": pytest.approx(200 / 3)}
    assert result["unparsed"] == [{"id": "p2", "reply": "(B)"}, {"id": "p4", "reply": "I don't know."}]
    assert [r["letter"] for r in result["records"]] == ["B", None, "C", None, "A"]
    assert [r["letter_lenient"] for r in result["records"]] == ["B", "B", "C", None, "A"]


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
    assert "| average | 60.00 | 40.00 |" in table and "unparsed" in table


def test_missing_problem_is_an_error(tmp_path):
    (tmp_path / "problems.json").write_text("{}")
    with pytest.raises(KeyError, match="no problem"):
        scienceqa.evaluate_scienceqa(FixedAnswerer("A"), QUESTIONS, str(tmp_path / "problems.json"))


# Each reply is written to trip one of LLaVA's rules (llava/eval/eval_science_qa.py, LLaVA-1.5):
# (reply, options, LLaVA's letter, our lenient letter).
LLAVA_TABLE = [
    ("B", 4, "B", "B"),                                   # a bare letter
    ("B. red", 4, "B", "B"),                              # a letter, then ". "
    ("B.", 4, None, "B"),                                 # no space after the dot: not LLaVA's form
    ("B) red", 4, None, "B"),
    ("(A)", 4, None, "A"),
    ("Answer: D", 4, None, "D"),
    ("the answer is c.", 4, None, "C"),                   # lowercase: LLaVA wants "The answer is"
    ("The answer is C.", 4, "C", "C"),
    ("I think so. The answer is A, because", 4, "A", "A"),  # any one character after the letter
    ("The answer is C", 4, None, "C"),                    # nothing after the letter: their pattern fails
    ("The answer is B. No wait, The answer is C.", 4, None, None),  # two statements: neither
    ("The answer is E.", 4, None, None),                  # not one of this question's options
    ("E", 4, None, None),
    ("AB", 4, None, None),                                # membership is exact, not a substring
    ("", 4, None, None),
    (" B", 4, None, "B"),                                 # LLaVA does not strip
    ("green", 3, None, "C"),                              # an option's text, choices A. red B. blue C. green
]


@pytest.mark.parametrize("reply,options,llava,lenient", LLAVA_TABLE)
def test_llava_rules_against_the_lenient_reading(reply, options, llava, lenient):
    from comd_jax.eval.letters import extract_letter, llava_letter

    assert llava_letter(reply, options) == llava
    assert extract_letter(reply, options, ["red", "blue", "green", "pink"][:options]) == lenient


def test_average_follows_llava_and_lenient_stands_beside():
    # Truths: p1 B, p2 A, p3 C, p4 D, p5 A. Right by LLaVA's rules: p2, p5 (2 of 5). Right only when
    # read leniently: p1 "(B)", p3 "Answer: C", p4 the option's text "green".
    replies = {"Which colour is the square?": "(B)", "When is the market held?": "The answer is A.",
               "Which word is a verb?": "Answer: C", "What colour is the leaf?": "green",
               "Is the picture blue?": "A. yes"}
    answerer = FixedAnswerer(lambda r: next(v for k, v in replies.items() if k in r.messages[-1][1]))
    result = scienceqa.evaluate_scienceqa(answerer, QUESTIONS, PROBLEMS, FIXTURES)
    assert result["scores"]["average"] == pytest.approx(40.0)
    assert result["scores"]["average_lenient"] == pytest.approx(100.0)
    assert result["scores"]["unparsed"] == 3
    assert [u["id"] for u in result["unparsed"]] == ["p1", "p3", "p4"]
