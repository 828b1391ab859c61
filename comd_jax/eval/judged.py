"""A judged benchmark in LLaVA-Bench's shape: relative score of a candidate vs reference answers.

Inputs (LLaVA's files):
  questions  JSONL of {"question_id", "image", "text", "category"} (conversation / detail / complex)
  answers    JSONL of reference answers {"question_id", "text"} (LLaVA-Bench: GPT-4's)
  context    optional JSONL, one record per image, what a text-only judge knows of it:
             {"image", "caption"} (in-the-wild; a caption list is joined by newlines), or
             COCO's {"image", "captions": [...], "instances": [{"category", "bbox"}, ...]}
The judge sees LLaVA's review prompt for the question's category
(`comd_jax.eval.judge.llava_bench_messages`), the reference as Assistant 1 and the
candidate as Assistant 2. Relative score = mean candidate score / mean reference score x 100,
per category and overall, as LLaVA's `summarize_gpt_review.py` computes it. `swap=True` also
judges with the order swapped and averages (position bias). Replies without a score line are
retried, then excluded and counted; they are never read as 0 (LLaVA's script would average in
its -1). Every raw judge reply is kept.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Optional, Sequence

from comd_jax.data.templates import IMAGE_PLACEHOLDER
from comd_jax.eval import judge as pairwise
from comd_jax.eval.answerer import Answerer, ask
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
    context_kind: str = "caption"  # "coco": captions and boxes, which LLaVA's rule describes so


def image_context(record: dict, where: str) -> tuple[str, str]:
    """(the text the judge reads for an image, its kind) from one context record."""
    if "captions" in record or "instances" in record:
        captions = record.get("captions") or []
        captions = [captions] if isinstance(captions, str) else captions
        try:
            boxes = [f"{i['category']}: {i['bbox']}" for i in record.get("instances") or []]
        except (KeyError, TypeError):
            raise ValueError(f"{where}: each of 'instances' needs 'category' and 'bbox'") from None
        return "\n".join(captions) + "\n\n" + "\n".join(boxes), "coco"
    if "caption" not in record:
        raise ValueError(f"{where}: a context record needs 'caption', or COCO's 'captions' and 'instances'")
    caption = record["caption"]
    return ("\n".join(caption) if isinstance(caption, list) else str(caption)), "caption"


def _field(record: dict, name: str, where: str):
    if name not in record:
        raise ValueError(f"{where}: no {name!r} field")
    return record[name]


def load_bench(questions_file: str, answers_file: str, context_file: str = "") -> list[BenchItem]:
    """The benchmark's items, every file checked before anything is asked."""
    references = {str(_field(a, "question_id", f"{answers_file}:{n}")): _field(a, "text", f"{answers_file}:{n}")
                  for n, a in enumerate(load_json_or_jsonl(answers_file), 1)}
    contexts = {}
    if context_file:
        for n, c in enumerate(load_json_or_jsonl(context_file), 1):
            contexts[_field(c, "image", f"{context_file}:{n}")] = image_context(c, f"{context_file}:{n}")
    items = []
    for n, q in enumerate(load_json_or_jsonl(questions_file), 1):
        where = f"{questions_file}:{n}"
        qid = str(_field(q, "question_id", where))
        if qid not in references:
            raise KeyError(f"{answers_file}: no reference answer for question {qid} ({where})")
        category = q.get("category", "conversation")
        pairwise.llava_rule(category, "caption")  # an unknown category fails here, not mid-run
        image = q.get("image", "")
        if q.get("context"):
            context, kind = str(q["context"]), "caption"
        elif context_file and image:
            if image not in contexts:
                raise ValueError(f"{where}: image {image!r} has no record in {context_file}")
            context, kind = contexts[image]
        else:
            context, kind = "", "caption"
        items.append(BenchItem(qid, image, _field(q, "text", where), category, references[qid], context, kind))
    return items


async def judge_item(judge: pairwise.PairwiseJudge, item: BenchItem, candidate: str, *, swap: bool) -> dict:
    """{"reference_score", "candidate_score"} (None if unreadable) and the raw judge replies."""
    scores, raw = await judge.both_orders(
        lambda first, second: pairwise.llava_bench_messages(item.question, first, second, item.context,
                                                            item.category, item.context_kind),
        item.reference, candidate, swap=swap)
    return {"question_id": item.question_id, "category": item.category, "candidate": candidate,
            "judge_raw": raw, "reference_score": None if scores is None else scores[0],
            "candidate_score": None if scores is None else scores[1]}


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


async def _judge_all(judge, items, candidates, swap: bool, concurrency: int) -> list:
    gate = asyncio.Semaphore(max(concurrency, 1))

    async def one(item, candidate):
        async with gate:
            return await judge_item(judge, item, candidate, swap=swap)

    return await asyncio.gather(*(one(i, c) for i, c in zip(items, candidates)))


def evaluate_judged(answerer: Answerer, items: Sequence[BenchItem], judge: pairwise.PairwiseJudge,
                    image_folder: str = "", *, swap: bool = False, concurrency: int = 8) -> dict:
    """`judge`: a PairwiseJudge over the judge endpoint's ChatClient (its retries, max_tokens)."""
    requests = [ask(f"{IMAGE_PLACEHOLDER}\n{item.question}" if item.image else item.question,
                    os.path.join(image_folder, item.image) if item.image else None) for item in items]
    candidates = answerer.answer(requests)
    records = asyncio.run(_judge_all(judge, items, candidates, swap, concurrency))
    table = summarize(records)
    return {
        "benchmark": "judged",
        "scores": {category: cell["relative"] for category, cell in table.items()},
        "table": table,
        "unparseable": [{"question_id": r["question_id"], "judge_raw": r["judge_raw"]}
                        for r in records if r["candidate_score"] is None],
        "records": records,
    }


def judge_for(base_url: str, model: str, *, api_key: Optional[str] = None, retries: int = 2,
              max_tokens: int = 1024, concurrency: int = 8) -> pairwise.PairwiseJudge:
    """LLaVA's review settings (temperature 0.2, 1024 tokens) over an OpenAI-compatible endpoint."""
    from comd_jax.serve.client import ChatClient, ClientConfig, openai_base

    client = ChatClient(ClientConfig(base_url=openai_base(base_url), model=model, api_key=api_key or None,
                                     max_concurrency=concurrency))
    return pairwise.PairwiseJudge(client, max_tokens=max_tokens, retries=retries, temperature=0.2)
