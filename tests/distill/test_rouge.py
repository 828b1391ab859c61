"""The compiled ROUGE-L filter scores as rouge-score does, and keeps what its pair-by-pair loop kept."""
import numpy as np
import pytest

from comd_jax.distill import rouge

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

WORDS = ("what how many is the a of in image color shape left right red blue square circle there "
         "describe count which are objects near far big small 2 3 10 café naïve Über x-ray e.g.").split()


def sample_texts(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = rng.choice(WORDS, size=rng.integers(0, 14))
        text = " ".join(words)
        if rng.random() < 0.3:  # punctuation and case rouge-score's tokenizer throws away
            text = text.upper().replace(" ", ", ", 1) + "?!"
        out.append(text)
    return out + ["", "!!!", "<image>\nWhat is this?", "ÀÉÎ õü", "İstanbul"]


def reference_novel(candidates, existing, limit):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    seen, out = list(existing), []
    for text in candidates:
        ok = all(scorer.score(other, text)["rougeL"].fmeasure <= limit for other in seen)
        if ok:
            seen.append(text)
        out.append(ok)
    return out


def test_tokens_match_rouge_score():
    from rouge_score import tokenize

    for text in sample_texts(200, 0):
        assert rouge.tokens(text) == tokenize.tokenize(text, None), text


def test_scores_equal_rouge_score_bit_for_bit():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    preds, targets = sample_texts(60, 1), sample_texts(70, 2)
    got = rouge.rouge_l(preds, targets)
    want = np.array([[scorer.score(t, p)["rougeL"].fmeasure for t in targets] for p in preds])
    assert got.shape == (len(preds), len(targets))
    assert np.array_equal(got, want)
    assert (got > 0).mean() > 0.3 and (got == 1.0).any()  # the sample has overlaps to score, and exact repeats


@pytest.mark.parametrize("limit", [0.7, 0.5, 2 / 3])
def test_novel_keeps_what_the_pair_by_pair_filter_kept(limit):
    pool = sample_texts(150, 3)
    candidates = sample_texts(80, 4) + pool[:5]  # repeats of the pool are never novel
    got = rouge.novel(candidates, pool, limit)
    assert got == reference_novel(candidates, pool, limit)
    assert 0 < sum(got) < len(candidates)
    assert not any(got[-5:][i] for i, text in enumerate(pool[:5]) if rouge.tokens(text))


def test_candidates_are_checked_against_each_other_in_order():
    a = "How many red squares are left of the circle?"
    got = rouge.novel([a, a.replace("red", "blue"), "Describe the image in detail."], [])
    assert got == [True, False, True]
    assert rouge.novel([], ["x"]) == [] and rouge.novel(["x y z"], []) == [True]


def test_row_chunks_give_the_same_answer(monkeypatch):
    pool, candidates = sample_texts(40, 5), sample_texts(30, 6)
    whole = rouge.novel(candidates, pool)
    monkeypatch.setattr(rouge, "_ROWS", 7)
    assert rouge.novel(candidates, pool) == whole
