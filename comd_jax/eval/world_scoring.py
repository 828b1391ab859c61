"""How a reply to one of the offline world's questions is scored, per skill.

- short-answer skills (colour, shape, counting, existence, spatial relation,
  comparison, and each turn of multi-turn): the ground-truth answer appears as
  a whole word/phrase, and no rival answer of the same kind does ("red" and not
  also "blue"), so naming every option does not score;
- multiple_choice: the extracted option letter equals the truth;
- detailed_description: token F1 against the reference description.
"""
from __future__ import annotations

import re

from comd_jax.data.synthetic.scene import PALETTE, SHAPES
from comd_jax.eval.letters import extract_letter
from comd_jax.eval.matching import exact_match, token_f1, words  # noqa: F401 (re-exported)

# Answers of one kind: a reply naming two of them has not committed to one.
DOMAINS = (tuple(PALETTE), SHAPES, ("yes", "no"), tuple(str(i) for i in range(10)),
           ("left", "right", "above", "below"))


def answer_match(reply: str, truth: str) -> bool:
    said, target = words(reply), words(truth)
    if not target or not any(said[i:i + len(target)] == target for i in range(len(said) - len(target) + 1)):
        return False
    domain = next((d for d in DOMAINS if truth.lower() in d), ())
    return not any(w in said for w in domain if w != truth.lower())


def letter_match(reply: str, question: str, truth: str) -> bool:
    options = re.findall(r"^([A-Z])\. (.*)$", question, re.MULTILINE)
    letter = extract_letter(reply, len(options), [text for _, text in options])
    return letter == truth


METRICS = {"multiple_choice": "letter", "detailed_description": "token_f1"}  # others: "answer"


def score_turn(skill: str, reply: str, question: str, reference: str, truth: str) -> float:
    metric = METRICS.get(skill, "answer")
    if metric == "letter":
        return float(letter_match(reply, question, truth))
    if metric == "token_f1":
        return token_f1(reply, reference)
    return float(answer_match(reply, truth))


