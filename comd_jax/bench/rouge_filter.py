"""The augmentor's near-duplicate filter at Lion's scale: ours (rapidfuzz LCS) vs rouge-score.

  python -m comd_jax.bench.rouge_filter [--candidates=1000] [--pool=50000] [--peer_pairs=200000]

Instructions are drawn from a fixed vocabulary with LLaVA-like lengths (5-30 words), seeded.
Ours runs the whole filter (`comd_jax.distill.rouge.novel`: every candidate against the pool and
against the candidates kept before it). rouge-score would take hours on the full 50M pairs, so it
scores `--peer_pairs` of them and its rate is scaled to the full filter. Before timing, both score
a sample of pairs, which must agree exactly. Goal: ours ≤ 30 s on the 2-core machine. Prints
seconds of each and the ratio (rouge-score's time / ours) last.
"""
from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np

VOCAB = 3000


def instructions(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(VOCAB)]
    # Zipf-like draws, so common words repeat as they do in real instructions.
    p = 1.0 / np.arange(1, VOCAB + 1)
    p /= p.sum()
    lengths = rng.integers(5, 31, size=n)
    return [" ".join(rng.choice(words, size=k, p=p)) + "?" for k in lengths]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=50_000)
    parser.add_argument("--peer_pairs", type=int, default=200_000)
    parser.add_argument("--limit", type=float, default=0.7)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from rouge_score import rouge_scorer

    from comd_jax.distill import rouge

    pool = instructions(args.pool, 0)
    candidates = instructions(args.candidates, 1)
    candidates[::10] = pool[: len(candidates[::10])]  # some true repeats for the filter to drop

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    sample_p, sample_t = candidates[:40], pool[:50]
    want = np.array([[scorer.score(t, p)["rougeL"].fmeasure for t in sample_t] for p in sample_p])
    if not np.array_equal(rouge.rouge_l(sample_p, sample_t), want):
        raise SystemExit("rapidfuzz ROUGE-L differs from rouge-score on the sample")

    logging.info("load average %s, %d CPUs", " ".join(f"{x:.2f}" for x in os.getloadavg()), os.cpu_count())
    start = time.perf_counter()
    kept = rouge.novel(candidates, pool, args.limit)
    ours = time.perf_counter() - start
    pairs = len(candidates) * len(pool) + len(candidates) ** 2
    logging.info("ours: %d candidates vs %d pool: %.2f s (%.1fM pairs/s), kept %d",
                 len(candidates), len(pool), ours, pairs / ours / 1e6, sum(kept))

    rows = max(1, args.peer_pairs // len(pool))
    start = time.perf_counter()
    for text in candidates[:rows]:
        for other in pool:
            scorer.score(other, text)
    peer_rate = rows * len(pool) / (time.perf_counter() - start)
    peer = pairs / peer_rate
    logging.info("rouge-score: %d pairs at %.0f pairs/s, so %.0f s for the whole filter", rows * len(pool),
                 peer_rate, peer)
    logging.info("goal: ours <= 30 s: %s", "met" if ours <= 30 else "NOT met")
    print(f"ratio rouge-score/ours: {peer / ours:.1f}")


if __name__ == "__main__":
    main()
