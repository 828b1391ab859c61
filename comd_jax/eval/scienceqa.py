"""ScienceQA in the format LLaVA evaluates it, scored by the leaderboard's columns.

Inputs (what users already have):
  question file  JSON list (or JSONL) of {"id", "image"?, "conversations": [{"from": "human",
                 "value": "<question with lettered options>"}, ...]}  (LLaVA's llava_test_CQM-A.json)
  problems file  ScienceQA's problems.json: {id: {"choices", "answer" (index), "hint", "image",
                 "subject", "grade", ...}}
Columns: NAT/SOC/LAN by subject; TXT = has a text context (hint), IMG = has an
image context, NO = neither (TXT and IMG overlap); G1-6 / G7-12 by grade;
"average" over every question. Replies are read by LLaVA's own rules
(`letters.llava_letter`: a bare letter, a letter then ". ", or exactly one "The
answer is X."), so `average` is the number the paper and the leaderboard report;
anything else counts as wrong and is listed as `unparsed`. Our lenient reading
("(B)", "Answer: D", an option's text) is reported beside it as `average_lenient`.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

from comd_jax.data.templates import IMAGE_PLACEHOLDER
from comd_jax.eval.answerer import Answerer, ask
from comd_jax.eval.letters import extract_letter, llava_letter

SUFFIX = "Answer with the option's letter from the given choices directly."
COLUMNS = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")
_SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}


def load_json_or_jsonl(path: str):
    """A .jsonl file (or any file that is not one JSON document) is read line by line."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not path.endswith(".jsonl"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON line ({e.msg})") from None
    return records


def build_prompt(question: Mapping, *, suffix: str = SUFFIX) -> str:
    """The first human turn without placeholders, the image (if any) first, the suffix last."""
    text = question["conversations"][0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
    if suffix and not text.endswith(suffix):
        text = f"{text}\n{suffix}"
    return f"{IMAGE_PLACEHOLDER}\n{text}" if question.get("image") else text


def columns_of(problem: Mapping) -> list[str]:
    """The leaderboard columns one problem counts in."""
    has_text, has_image = bool(problem.get("hint")), bool(problem.get("image"))
    cols = [_SUBJECTS[problem["subject"]]] if problem.get("subject") in _SUBJECTS else []
    cols += ["TXT"] * has_text + ["IMG"] * has_image + ["NO"] * (not has_text and not has_image)
    grade = str(problem.get("grade", "")).removeprefix("grade")
    if grade.isdigit():
        cols.append("G1-6" if int(grade) <= 6 else "G7-12")
    return cols


def leaderboard(records: Sequence[Mapping]) -> dict:
    """{"average"|column: {"correct", "total", "accuracy" (percent, None when empty)}}."""
    table = {name: {"correct": 0, "total": 0} for name in ("average",) + COLUMNS}
    for record in records:
        for name in ["average"] + record["columns"]:
            table[name]["total"] += 1
            table[name]["correct"] += int(record["correct"])
    for cell in table.values():
        cell["accuracy"] = 100.0 * cell["correct"] / cell["total"] if cell["total"] else None
    return table


def score(question_id: str, reply: str, problem: Mapping) -> dict:
    """One reply, by LLaVA's rules (`letter`, `correct`) and by our lenient reading beside them."""
    choices = list(problem["choices"])
    letter = llava_letter(reply, len(choices))
    lenient = extract_letter(reply, len(choices), choices)
    truth = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[int(problem["answer"])]
    return {"id": question_id, "reply": reply, "letter": letter, "answer": truth,
            "correct": letter == truth, "letter_lenient": lenient, "correct_lenient": lenient == truth,
            "columns": columns_of(problem)}


def evaluate_scienceqa(answerer: Answerer, question_file: str, problems_file: str, image_folder: str = "",
                       *, limit: Optional[int] = None) -> dict:
    """Accuracy (percent) overall and per leaderboard column; every reply kept."""
    questions = load_json_or_jsonl(question_file)[:limit]
    problems = load_json_or_jsonl(problems_file)
    missing = [q["id"] for q in questions if str(q["id"]) not in problems]
    if missing:
        raise KeyError(f"{problems_file}: no problem for question ids {missing[:5]} ({len(missing)} in all)")
    requests = [ask(build_prompt(q), os.path.join(image_folder, q["image"]) if q.get("image") else None)
                for q in questions]
    replies = answerer.answer(requests)
    records = [score(str(q["id"]), reply, problems[str(q["id"])]) for q, reply in zip(questions, replies)]
    table = leaderboard(records)
    lenient = leaderboard([{"correct": r["correct_lenient"], "columns": []} for r in records])["average"]
    unparsed = [{"id": r["id"], "reply": r["reply"]} for r in records if r["letter"] is None]
    return {
        "benchmark": "scienceqa",
        # LLaVA's rules make `average` and the columns; the lenient reading is reported beside, never instead.
        "scores": {**{name: cell["accuracy"] for name, cell in table.items()},
                   "average_lenient": lenient["accuracy"], "unparsed": len(unparsed)},
        "table": table,
        "unparsed": unparsed,
        "records": records,
    }
