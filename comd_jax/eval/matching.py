"""Answers matched against a reference by their words: the one token F1 and exact match that
the world's scoring and the reference judges share (option letters: `comd_jax.eval.letters`)."""
from __future__ import annotations

import collections
import re


ARTICLES = frozenset(("a", "an", "the"))


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def token_f1(reply: str, reference: str, *, drop_articles: bool = False) -> float:
    said, ref = words(reply), words(reference)
    if drop_articles:  # SQuAD's normalisation, as the reference judges compare answers
        said, ref = [w for w in said if w not in ARTICLES], [w for w in ref if w not in ARTICLES]
    common = sum((collections.Counter(said) & collections.Counter(ref)).values())
    if not said or not ref or not common:
        return float(not said and not ref)
    precision, recall = common / len(said), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(reply: str, reference: str, *, drop_articles: bool = False) -> bool:
    """The same words; `drop_articles`: as SQuAD compares short answers ("a cat" is "cat")."""
    said, ref = words(reply), words(reference)
    if drop_articles:
        said, ref = [w for w in said if w not in ARTICLES], [w for w in ref if w not in ARTICLES]
    return said == ref
