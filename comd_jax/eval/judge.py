"""Pairwise judging, one module for the CoMD rounds and for LLaVA-Bench: the prompts, the
verdict parser, and a judge over any chat endpoint (`comd_jax.serve.client.ChatClient`: our
server, vLLM, a hosted API; tests use fakes).

- `lion_messages`: the loop's prompt (Lion's pairwise review: an explanation, then one
  "Score of Assistant N: x" line per answer). The judge sees the image when it can.
- `llava_bench_messages`: LLaVA's review prompt as `llava/eval/eval_gpt_review_bench.py`
  (in-the-wild: the image's caption) and `eval_gpt_review_visual.py` (COCO: five captions and
  the instances' boxes) build it; the judge sees text only, the reference as Assistant 1.
- `parse_scores`: the two scores, read only from a score line: the labelled lines (plain,
  markdown, "x/10") or a line of exactly two numbers (LLaVA-Bench's first line). Numbers in
  the prose are never read as scores; a reply without a score line is unparseable.
- `PairwiseJudge`: one prompt, retried while unparseable; `both_orders` runs it with the
  answers swapped too, which cancels the judge's position bias when averaged.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional, Sequence

from comd_jax.serve.client import user_message

# Both Lion and LLaVA's review scripts give the judge this system prompt.
SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."

LION_TEMPLATE = """[Question]
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

# LLaVA's rule.json: one rule per category, whose text differs only by how the image is
# described to the judge (the wording is the benchmark's protocol, so it is LLaVA's).
_LLAVA_CONTEXT = {
    "caption": "For your reference, the visual content in the image is represented with a few sentences "
               "describing the image. ",
    "coco": "For your reference, the visual content in the image is represented with five descriptive "
            "sentences describing the same image and the bounding box coordinates of each object in the "
            "scene. These coordinates are in the form of bounding boxes, represented as (x1, y1, x2, y2) "
            "with floating numbers ranging from 0 to 1. These values correspond to the top left x, top left "
            "y, bottom right x, and bottom right y. ",
}
_LLAVA_RULE = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. {context}\n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
    "performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 and 2, "
    "respectively. The two scores are separated by a space.\n"
    "In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any "
    "potential bias and ensuring that the order in which the responses were presented does not affect your "
    "judgment.")
LLAVA_CATEGORIES = ("conv", "detail", "complex")  # rule.json's keys; "conversation" is "conv"


def llava_rule(category: str, context_kind: str) -> str:
    """The rule prompt of a LLaVA-Bench category ("conversation"/"conv", "detail", "complex"),
    for a context made of one caption ("caption") or of COCO captions and boxes ("coco")."""
    key = "conv" if category == "conversation" else category
    if key not in LLAVA_CATEGORIES:
        raise ValueError(f"LLaVA-Bench category {category!r} has no rule; LLaVA's are conversation (conv), "
                         f"detail and complex")
    if context_kind not in _LLAVA_CONTEXT:
        raise ValueError(f"context kind {context_kind!r}: one of {sorted(_LLAVA_CONTEXT)}")
    return _LLAVA_RULE.format(context=_LLAVA_CONTEXT[context_kind])


def llava_bench_messages(question: str, answer_1: str, answer_2: str, context: str, category: str,
                         context_kind: str = "caption") -> list[dict]:
    content = (f"[Context]\n{context}\n\n[Question]\n{question}\n\n"
               f"[Assistant 1]\n{answer_1}\n\n[End of Assistant 1]\n\n"
               f"[Assistant 2]\n{answer_2}\n\n[End of Assistant 2]\n\n"
               f"[System]\n{llava_rule(category, context_kind)}\n\n")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


def lion_messages(question: str, answer_1: str, answer_2: str, images: Sequence = ()) -> list[dict]:
    prompt = LION_TEMPLATE.format(question=question, answer_1=answer_1, answer_2=answer_2)
    return [{"role": "system", "content": SYSTEM}, user_message(prompt, images)]


# -- the verdict parser --------------------------------------------------------------

_NUMBER = r"(\d+(?:\.\d+)?)"
_OUT_OF = r"(?:\s*/\s*10(?:\.0+)?)?"  # "8/10"
# "Score of Assistant 1: 8", "Assistant 1's score: 8", "Assistant 1: 8/10"; the number closes
# the label, and only a "Score of" line may go on after it ("8 (accurate, but brief)").
_SCORE_OF = re.compile(rf"^(?:the\s+)?(?:overall\s+)?scores?\s+(?:of|for)\s+(?:the\s+)?assistant\s*([12])\s*"
                       rf"(?:is|[:：=\-–])?\s*{_NUMBER}{_OUT_OF}(?:\s*$|[\s.,;(\-–—].*$)", re.I)
_ASSISTANT_IS = re.compile(rf"^assistant\s*([12])(?:'s)?(?:\s+(?:overall\s+)?score)?\s*[:：=\-–]\s*{_NUMBER}"
                           rf"{_OUT_OF}\s*\.?$", re.I)
_PAIR = re.compile(rf"^{_NUMBER}{_OUT_OF}\s*(?:,\s*|\s+){_NUMBER}{_OUT_OF}\s*\.?$")
_PARTS = re.compile(r"\s*[;|]\s*|,\s*(?=(?:the\s+)?(?:score|assistant))", re.I)
_MARKUP = re.compile(r"[*_`#>]+")


def _plain(line: str) -> str:
    """A line without markdown emphasis, headings, quotes or a list bullet."""
    line = _MARKUP.sub("", line).strip()
    return re.sub(r"^(?:[-•+]\s+|\d+[.)]\s+(?=\D))", "", line).strip()


def parse_scores(text: Optional[str]) -> Optional[tuple[float, float]]:
    """(score of Assistant 1, score of Assistant 2), each in [1, 10], or None when the reply
    has no score line. Labelled lines win over a pair line; among labelled lines the last one
    of each assistant wins (explanations may quote a score before giving their own)."""
    lines = [_plain(line) for line in (text or "").splitlines()]
    lines = [line for line in lines if line]
    labelled = {}
    for line in lines:
        for part in _PARTS.split(line):  # "Score of Assistant 1: 8; Score of Assistant 2: 6"
            match = _SCORE_OF.match(part) or _ASSISTANT_IS.match(part)
            if match:
                labelled[match.group(1)] = float(match.group(2))
    if set(labelled) == {"1", "2"}:
        pair = (labelled["1"], labelled["2"])
    else:
        pair = None
        for line in lines[:1] + lines[-1:]:
            match = _PAIR.match(line)
            if match:
                pair = (float(match.group(1)), float(match.group(2)))
                break
    if pair is None or not all(1.0 <= s <= 10.0 for s in pair):
        return None
    return pair


# -- the judge -----------------------------------------------------------------------

@dataclasses.dataclass
class PairwiseJudge:
    """Asks `client` (a ChatClient) to score two answers; an unparseable reply is asked again
    with another seed, up to `retries` times, then given up (None), never read as 0."""
    client: object
    max_tokens: int = 512
    retries: int = 2
    temperature: float = 0.0

    async def once(self, messages: list) -> tuple[Optional[tuple], list[str]]:
        raw: list[str] = []
        for attempt in range(self.retries + 1):
            choices = await self.client.chat(messages, temperature=self.temperature, max_tokens=self.max_tokens,
                                             seed=attempt)
            raw.append(choices[0].text)
            scores = parse_scores(choices[0].text)
            if scores is not None:
                return scores, raw
        return None, raw

    async def both_orders(self, build: Callable[[str, str], list], first: str, second: str,
                          swap: bool = True) -> tuple[Optional[tuple], list[str]]:
        """(score of `first`, score of `second`), averaged over both orders when `swap`, or None
        when either order stays unparseable; and every raw reply, in order."""
        forward, raw = await self.once(build(first, second))
        if forward is None or not swap:
            return forward, raw
        backward, raw_back = await self.once(build(second, first))
        raw += raw_back
        if backward is None:
            return None, raw
        return ((forward[0] + backward[1]) / 2, (forward[1] + backward[0]) / 2), raw
