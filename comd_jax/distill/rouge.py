"""ROUGE-L F between instructions, with a compiled LCS (rapidfuzz), scoring as `rouge-score` does.

Lion and self-instruct drop a new instruction whose ROUGE-L F to anything in the pool is
above 0.7. At Lion's scale (a 50,000-instruction pool, 1,000 candidates a round) that is
50M LCS computations, too many for `rouge-score`'s pure-Python table. Each distinct token
is given one code point, so a token LCS is a character LCS, which rapidfuzz computes
bit-parallel across all cores.

Scores equal `rouge_scorer.RougeScorer(["rougeL"]).score(target, prediction).fmeasure`
bit for bit: the same tokenizer (lower-case, runs of [a-z0-9], no stemmer) and the same
float operations (precision, recall, then 2PR/(P+R)), so a candidate sits on the same side
of the limit with either library (tests/distill/test_rouge.py checks this on a sample).
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_SPACES = re.compile(r"\s+")
_TOKEN = re.compile(r"^[a-z0-9]+$")
_SURROGATES = range(0xD800, 0xE000)  # not encodable as str characters rapidfuzz can read
_ROWS = 256  # query rows per cdist call: bounds the int32 matrix at ROWS × len(choices)


def tokens(text: str) -> list:
    """rouge-score's default tokenizer without stemming."""
    words = _SPACES.split(_NON_ALNUM.sub(" ", text.lower()))
    return [w for w in words if _TOKEN.match(w)]


class Codebook:
    """Token → one character, shared by everything compared in one filter."""

    def __init__(self):
        self.codes = {}

    def _code(self, token: str) -> str:
        code = self.codes.get(token)
        if code is None:
            point = len(self.codes) + 1
            if point >= _SURROGATES.start:
                point += len(_SURROGATES)
            if point > 0x10FFFF:
                raise ValueError("more than 1.1M distinct tokens: too many to encode for the ROUGE-L filter")
            code = self.codes[token] = chr(point)
        return code

    def encode(self, texts: Iterable[str]) -> list:
        return ["".join(self._code(t) for t in tokens(text)) for text in texts]


def lcs_lengths(queries: Sequence[str], choices: Sequence[str]) -> np.ndarray:
    """Token LCS lengths, [len(queries), len(choices)], of encoded texts."""
    from rapidfuzz import process
    from rapidfuzz.distance import LCSseq

    out = np.zeros((len(queries), len(choices)), np.int32)
    if not len(queries) or not len(choices):
        return out
    for start in range(0, len(queries), _ROWS):
        out[start:start + _ROWS] = process.cdist(queries[start:start + _ROWS], choices, scorer=LCSseq.similarity,
                                                 dtype=np.int32, workers=-1)
    return out


def f_measure(lcs: np.ndarray, prediction_len: np.ndarray, target_len: np.ndarray) -> np.ndarray:
    """ROUGE-L F from LCS lengths, in rouge-score's order of float operations."""
    lcs = lcs.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = lcs / prediction_len
        recall = lcs / target_len
        f = 2 * precision * recall / (precision + recall)
    empty = (prediction_len == 0) | (target_len == 0) | (lcs == 0)
    return np.where(empty, 0.0, f)


def rouge_l(predictions: Sequence[str], targets: Sequence[str]) -> np.ndarray:
    """ROUGE-L F of every prediction against every target: [len(predictions), len(targets)]."""
    book = Codebook()
    p, t = book.encode(predictions), book.encode(targets)
    return f_measure(lcs_lengths(p, t), np.array([len(s) for s in p])[:, None], np.array([len(s) for s in t])[None, :])


def novel(candidates: Sequence[str], existing: Sequence[str], limit: float = 0.7) -> list:
    """For each candidate in order: True when its ROUGE-L F to every existing text and to every
    candidate kept before it is at most `limit`."""
    book = Codebook()
    cand, pool = book.encode(candidates), book.encode(existing)
    cand_len = np.array([len(s) for s in cand])
    if pool:
        pool_len = np.array([len(s) for s in pool])
        clash = np.zeros(len(cand), bool)
        for start in range(0, len(cand), _ROWS):
            rows = slice(start, start + _ROWS)
            f = f_measure(lcs_lengths(cand[rows], pool), cand_len[rows, None], pool_len[None, :])
            clash[rows] = (f > limit).any(axis=1)
    else:
        clash = np.zeros(len(cand), bool)
    among = f_measure(lcs_lengths(cand, cand), cand_len[:, None], cand_len[None, :]) > limit
    kept = []
    for i in range(len(cand)):
        ok = not clash[i] and not any(among[i, j] for j in kept)
        if ok:
            kept.append(i)
    keep = set(kept)
    return [i in keep for i in range(len(cand))]
