"""Assessors: who answered better, on a 1-10 scale.

- `LLMJudge`: the pairwise prompt of Lion / LLaVA-Bench through any chat
  endpoint (helpfulness, relevance, accuracy, level of detail; an explanation,
  then one score line per assistant). It runs twice with the answers swapped
  and averages, cancelling the judge's position bias. An output without two
  scores is retried, then counted and excluded — never read as 0.
- `ReferenceJudge`: for data with ground truth; exact match, multiple-choice
  letter or token F1 against the reference, mapped onto the same 1-10 scale.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import re
import string
from typing import Callable, Optional, Sequence

from comd_jax.distill.protocol import ChatClient
from comd_jax.serve.client import user_message

JUDGE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."

JUDGE_TEMPLATE = """[Question]
{question}

[The Start of Assistant 1's Answer]
{answer_1}
[The End of Assistant 1's Answer]

[The Start of Assistant 2's Answer]
{answer_2}
[The End of Assistant 2's Answer]

[System]
We would like your feedback on the two AI assistants' answers to the question above.
Rate the helpfulness, relevance, accuracy and level of detail of each answer. Each assistant
gets an overall score from 1 to 10; higher is better.
First give a thorough explanation of your evaluation, without letting the order in which the
answers appear or their length sway you. Then write exactly two lines, in this format:
Score of Assistant 1: <score>
Score of Assistant 2: <score>"""

_SCORE_LINE = re.compile(r"score\s+of\s+(?:the\s+)?assistant\s*([12])\s*[:：]\s*(\d+(?:\.\d+)?)", re.I)
_PAIR_LINE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[, ]\s*(\d+(?:\.\d+)?)\s*$")


def parse_scores(text: str) -> Optional[tuple]:
    """(score 1, score 2) from a judge output, or None. Accepts our two score lines
    and LLaVA-Bench's leading "7 8" line; scores must lie in [1, 10]."""
    found = {}
    for which, value in _SCORE_LINE.findall(text):
        found[which] = float(value)  # the last mention wins: explanations may quote scores
    if "1" in found and "2" in found:
        pair = (found["1"], found["2"])
    else:
        pair = None
        for line in text.strip().splitlines()[:1] + text.strip().splitlines()[-1:]:
            match = _PAIR_LINE.match(line)
            if match:
                pair = (float(match.group(1)), float(match.group(2)))
                break
    if pair is None or not all(1.0 <= s <= 10.0 for s in pair):
        return None
    return pair


@dataclasses.dataclass
class Verdict:
    teacher: Optional[float]  # None: the judge never gave parseable scores (excluded)
    student: Optional[float]
    raw: list  # judge outputs, kept for audit

    @property
    def valid(self) -> bool:
        return self.teacher is not None and self.student is not None


@dataclasses.dataclass
class LLMJudge:
    client: ChatClient
    max_tokens: int = 512
    retries: int = 2
    temperature: float = 0.0

    async def _one_order(self, question: str, first: str, second: str, images: Sequence[str], raw: list):
        prompt = JUDGE_TEMPLATE.format(question=question, answer_1=first, answer_2=second)
        messages = [{"role": "system", "content": JUDGE_SYSTEM}, user_message(prompt, images)]
        for attempt in range(self.retries + 1):
            choices = await self.client.chat(messages, temperature=self.temperature, max_tokens=self.max_tokens,
                                             seed=attempt)
            raw.append(choices[0].text)
            scores = parse_scores(choices[0].text)
            if scores is not None:
                return scores
        return None

    async def judge(self, question: str, teacher: str, student: str, images: Sequence[str] = ()) -> Verdict:
        raw: list = []
        forward = await self._one_order(question, teacher, student, images, raw)
        backward = await self._one_order(question, student, teacher, images, raw)
        if forward is None or backward is None:
            return Verdict(None, None, raw)
        return Verdict((forward[0] + backward[1]) / 2, (forward[1] + backward[0]) / 2, raw)


# -- reference judge ---------------------------------------------------------------

def normalize(text: str) -> str:
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


_LETTER = re.compile(r"(?:^|answer is|answer:|\()\s*\(?([A-Z])\)?(?:[.):\s]|$)")


def extract_letter(text: str) -> Optional[str]:
    """A multiple-choice letter from "B", "(B)", "The answer is B.", "B. red" ..."""
    stripped = text.strip()
    if len(stripped) == 1 and stripped.isalpha():
        return stripped.upper()
    match = _LETTER.search(stripped)
    return match.group(1) if match else None


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def letter_match(prediction: str, reference: str) -> float:
    got = extract_letter(prediction)
    return float(got is not None and got == extract_letter(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


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
