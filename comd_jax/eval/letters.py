"""Which option letter a free-form reply chose, or None when it cannot be told.

Models answer multiple choice as "B", "B.", "(B)", "B) blue", "The answer is B.",
"Answer: (B)", or by repeating an option's text. Anything else is unparseable:
the evaluator counts it wrong and lists it, instead of guessing a letter.
"""
from __future__ import annotations

import re
import string
from typing import Optional, Sequence

# A letter standing alone at the start: "B", "B.", "(B)", "B)", "B: blue", "B. blue".
_LEADING = re.compile(r"^\s*[\(\[]?([A-Z])(?:[\)\]\.:,]|\s*$|\s+[\-–:]|\s+(?=\S))")
# "the answer is B", "answer: (B)", "the correct option is C", "I choose (D)".
# A lowercase letter counts only when it ends the reply ("the answer is c."), so
# "the answer is a red circle" is not read as option A.
_STATED = re.compile(r"\b(?i:answer|option|choice)\s*(?i:is|:|would be|=)?\s*[:\s]*[\(\[]?"
                     r"([A-Z]|[a-z](?=[\)\]]?\s*\.?\s*$))\b(?![\w'])")
_PARENTHESIZED = re.compile(r"\(([A-Z])\)")


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def extract_letter(reply: str, num_options: int, choices: Optional[Sequence[str]] = None) -> Optional[str]:
    """The chosen letter among the first `num_options` (A, B, ...), else None."""
    valid = string.ascii_uppercase[:num_options]
    text = reply.strip()
    found = _leading_letter(text, valid)
    if found is None:
        stated = {m.upper() for m in _STATED.findall(text) if m.upper() in valid}
        found = stated.pop() if len(stated) == 1 else None
    if found is None:
        parenthesized = {m for m in _PARENTHESIZED.findall(text) if m in valid}
        found = parenthesized.pop() if len(parenthesized) == 1 else None
    if found is None and choices:
        found = _by_choice_text(text, choices, valid)
    return found


def _leading_letter(text: str, valid: str) -> Optional[str]:
    match = _LEADING.match(text)
    if match is None or match.group(1) not in valid:
        return None
    letter, rest = match.group(1), text[match.end():]
    # "A red circle." is an article, not option A: a bare capital followed by a
    # lowercase word without punctuation is prose.
    if text.lstrip("([ ").startswith(letter + " ") and rest[:1].islower():
        return None
    if re.match(r"\s*(?:or|and)\b", rest, re.IGNORECASE):  # "(A) or (B)": hedged, no choice
        return None
    return letter


def _by_choice_text(text: str, choices: Sequence[str], valid: str) -> Optional[str]:
    """The reply is exactly one option's text (ignoring case and punctuation)."""
    said = _normalize(text)
    hits = [valid[i] for i, choice in enumerate(choices[:len(valid)]) if _normalize(str(choice)) == said]
    return hits[0] if len(hits) == 1 else None


# LLaVA's own rules (llava/eval/eval_science_qa.py, LLaVA-1.5), which the paper's and the
# leaderboard's ScienceQA numbers use: the reply is exactly a letter, or starts with a letter
# and ". ", or holds exactly one "The answer is X" followed by any one character (their
# pattern's unescaped dot). The letter must name one of the question's options. Anything else
# is wrong, with no second chance: `extract_letter` is kept only for the lenient column.
_LLAVA_OPTIONS = ("A", "B", "C", "D", "E")  # a list there: membership is exact, not substring
_LLAVA_STATED = re.compile(r"The answer is ([A-Z]).")


def llava_letter(reply: str, num_options: int) -> Optional[str]:
    """The option letter LLaVA's ScienceQA scorer reads from `reply`, or None (counted wrong)."""
    if reply in _LLAVA_OPTIONS:
        letter = reply
    elif len(reply) >= 3 and reply[0] in _LLAVA_OPTIONS and reply[1:3] == ". ":
        letter = reply[0]
    else:
        found = _LLAVA_STATED.findall(reply)
        letter = found[0] if len(found) == 1 else None
    return letter if letter and letter in _LLAVA_OPTIONS[:num_options] else None
