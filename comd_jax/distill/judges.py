"""Assessors: who answered better, on a 1-10 scale.

- `LLMJudge`: the pairwise prompt of Lion through any chat endpoint
  (`comd_jax.eval.judge`, the one pairwise module, which LLaVA-Bench's scoring
  shares). It runs twice with the answers swapped and averages, cancelling the
  judge's position bias. A reply without a score line is retried, then
  counted and excluded — never read as 0.
- `ReferenceJudge`: for data with ground truth; exact match, multiple-choice
  letter or token F1 against the reference, mapped onto the same 1-10 scale.
"""
from __future__ import annotations

import asyncio
import dataclasses
from typing import Callable, Optional, Sequence

from comd_jax.distill.protocol import ChatClient
from comd_jax.eval import judge as pairwise
from comd_jax.eval import letters, matching


@dataclasses.dataclass
class Verdict:
    teacher: Optional[float]  # None: the judge never gave parseable scores (excluded)
    student: Optional[float]
    raw: list  # judge outputs, kept for audit
    skipped: Optional[str] = None  # why the judge's answer was unusable (comd_jax.serve.client.ItemSkipped)

    @property
    def valid(self) -> bool:
        return self.teacher is not None and self.student is not None


@dataclasses.dataclass
class LLMJudge:
    client: ChatClient
    max_tokens: int = 512
    retries: int = 2
    temperature: float = 0.0

    async def judge(self, question: str, teacher: str, student: str, images: Sequence[str] = ()) -> Verdict:
        judge = pairwise.PairwiseJudge(self.client, self.max_tokens, self.retries, self.temperature)
        scores, raw = await judge.both_orders(
            lambda first, second: pairwise.lion_messages(question, first, second, images), teacher, student)
        return Verdict(None, None, raw) if scores is None else Verdict(scores[0], scores[1], raw)


# -- reference judge ---------------------------------------------------------------

def exact_match(prediction: str, reference: str) -> float:
    return float(matching.exact_match(prediction, reference, drop_articles=True))


def letter_match(prediction: str, reference: str) -> float:
    got = letters.extract_letter(prediction, 26)
    return float(got is not None and got == letters.extract_letter(reference, 26))


def token_f1(prediction: str, reference: str) -> float:
    return matching.token_f1(prediction, reference, drop_articles=True)

METRICS: dict = {"exact": exact_match, "letter": letter_match, "f1": token_f1}


def to_scale(metric: float) -> float:
    """[0, 1] → the judges' 1-10 scale."""
    return 1.0 + 9.0 * metric


@dataclasses.dataclass
class ReferenceJudge:
    """Scores each answer against the ground truth; `metric_for(skill)` picks the metric."""

    metric_for: Callable[[Optional[str]], str] = lambda skill: "f1"

    async def judge(self, question: str, teacher: str, student: str, images: Sequence[str] = (), *,
                    reference: str, skill: Optional[str] = None) -> Verdict:
        metric = METRICS[self.metric_for(skill)]
        return Verdict(to_scale(metric(teacher, reference)), to_scale(metric(student, reference)), [])


@dataclasses.dataclass
class WorldJudge:
    """The offline world's ground truth, scored as the held-out evaluation scores it
    (comd_jax.eval.world_scoring): a full-sentence answer ("The circle is red.") counts
    when it names the truth and no rival, options by letter, descriptions by token F1.
    So "hard" in the rounds means what a lower held-out score means."""

    async def judge(self, question: str, teacher: str, student: str, images: Sequence[str] = (), *,
                    reference: str, skill: Optional[str] = None) -> Verdict:
        from comd_jax.eval.world_scoring import score_turn

        def score(answer: str) -> float:
            return to_scale(score_turn(skill or "", answer, question, reference, reference))

        return Verdict(score(teacher), score(student), [])


async def judge_all(judge, items: Sequence[dict], concurrency: int = 8) -> list:
    """Judge many (question, teacher, student, ...) items with bounded concurrency, in order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item):
        async with gate:
            return await judge.judge(**item)

    return await asyncio.gather(*(one(item) for item in items))
