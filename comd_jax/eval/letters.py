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
