"""A judged benchmark in LLaVA-Bench's shape: relative score of a candidate vs reference answers.

Inputs:
  questions  JSONL of {"question_id", "image", "text", "category"} (conversation / detail / complex)
  answers    JSONL of reference answers {"question_id", "text"} (LLaVA-Bench: GPT-4's)
  context    optional JSONL {"image", "caption"}: what a text-only judge knows of each image
For each question the judge scores reference (Assistant 1) and candidate
(Assistant 2); relative score = mean candidate score / mean reference score x 100,
per category and overall. `swap=True` also judges with the order swapped and
averages (position bias). Replies the parser cannot read are retried, then
excluded and counted; they are never read as 0. Every raw judge reply is kept.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Optional, Sequence

from comd_jax.data.templates import IMAGE_PLACEHOLDER
from comd_jax.eval.answerer import Answerer, ask
from comd_jax.eval.judge import JudgeClient, judge_messages, parse_scores
from comd_jax.eval.scienceqa import load_json_or_jsonl

CATEGORIES = ("conversation", "detail", "complex")


@dataclasses.dataclass(frozen=True)
class BenchItem:
    question_id: str
    image: str
    question: str
    category: str
    reference: str
    context: str = ""


def load_bench(questions_file: str, answers_file: str, context_file: str = "") -> list[BenchItem]:
    references = {str(a["question_id"]): a["text"] for a in load_json_or_jsonl(answers_file)}
    contexts = {}
    if context_file:
        contexts = {c["image"]: c.get("caption", "") for c in load_json_or_jsonl(context_file)}
    items = []
    for q in load_json_or_jsonl(questions_file):
        qid = str(q["question_id"])
        if qid not in references:
            raise KeyError(f"{answers_file}: no reference answer for question {qid}")
        items.append(BenchItem(qid, q.get("image", ""), q["text"], q.get("category", "all"), references[qid],
                               q.get("context") or contexts.get(q.get("image", ""), "")))
    return items


def _judge_once(judge: JudgeClient, messages: list, retries: int) -> tuple[Optional[tuple], list[str]]:
    raw = []
    for _ in range(retries + 1):
        raw.append(judge.complete(messages))
        scores = parse_scores(raw[-1])
        if scores is not None:
            return scores, raw
    return None, raw


def judge_item(judge: JudgeClient, item: BenchItem, candidate: str, *, swap: bool, retries: int) -> dict:
    """{"reference_score", "candidate_score"} (None if unreadable) and the raw judge replies."""
    scores, raw = _judge_once(judge, judge_messages(item.question, item.reference, candidate, item.context),
                              retries)
    record = {"question_id": item.question_id, "category": item.category, "candidate": candidate,
              "judge_raw": raw, "reference_score": None, "candidate_score": None}
    if scores is None:
        return record
    pairs = [scores]
    if swap:
        swapped, raw_swapped = _judge_once(
            judge, judge_messages(item.question, candidate, item.reference, item.context), retries)
        record["judge_raw_swapped"] = raw_swapped
        if swapped is None:
            return record
        pairs.append((swapped[1], swapped[0]))
    record["reference_score"] = sum(p[0] for p in pairs) / len(pairs)
    record["candidate_score"] = sum(p[1] for p in pairs) / len(pairs)
    return record


def summarize(records: Sequence[dict]) -> dict:
    """Per category and "all": relative score, both mean scores x10 (LLaVA's columns), counts."""
    table = {}
    for category in sorted({r["category"] for r in records}) + ["all"]:
        rows = [r for r in records if category in ("all", r["category"])]
        scored = [r for r in rows if r["candidate_score"] is not None]
        ref = sum(r["reference_score"] for r in scored) / len(scored) if scored else None
        cand = sum(r["candidate_score"] for r in scored) / len(scored) if scored else None
        table[category] = {
            "relative": 100.0 * cand / ref if scored and ref else None,
            "reference": 10.0 * ref if ref is not None else None,
            "candidate": 10.0 * cand if cand is not None else None,
            "judged": len(scored), "unparseable": len(rows) - len(scored)}
    return table


def evaluate_judged(answerer: Answerer, items: Sequence[BenchItem], judge: JudgeClient, image_folder: str = "",
                    *, swap: bool = False, retries: int = 2, workers: int = 4) -> dict:
    requests = [ask(f"{IMAGE_PLACEHOLDER}\n{item.question}" if item.image else item.question,
                    os.path.join(image_folder, item.image) if item.image else None) for item in items]
    candidates = answerer.answer(requests)
    with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
        records = list(pool.map(lambda pair: judge_item(judge, *pair, swap=swap, retries=retries),
                                zip(items, candidates)))
    table = summarize(records)
    return {
        "benchmark": "judged",
        "scores": {category: cell["relative"] for category, cell in table.items()},
        "table": table,
        "unparseable": [{"question_id": r["question_id"], "judge_raw": r["judge_raw"]}
                        for r in records if r["candidate_score"] is None],
        "records": records,
    }
