"""Which positions the LM head runs on in training: every position, or (a stage
opting in) only those that predict a target.

In LLaVA-style batches most positions carry no loss: the image tokens, the
system prompt, the user's turns and the padding. Their logits would cost an LM
head matmul forward and two backward, plus a softmax over the vocabulary, all
multiplied by a zero weight. So the host lists, for every row, the positions
whose next token is a target (`target_index`, int32 [B, K]) and the step keeps
only those: the last decoder block runs its queries, output projection and MLP
there (its keys and values still cover every position), then the LM head.

K is the batch's largest per-row target count rounded up to a multiple of
T/CAPACITY_STEPS: a jitted step compiles once per (length bucket, capacity),
a handful of shapes, not once per batch. Rows with fewer targets fill up with
position T-1, which predicts nothing (its weight is 0). K == T means "every
position": the step then skips the gather and runs the plain full-length head.
Each capacity is one more compile of the step, so it is opt-in per stage
(`head_capacity_steps`, 0 = off: the head at every position, one compile per
length bucket). It pays where the head is a large share of the model's work (a
big vocabulary on a small model) and the stage runs long enough to earn back the
compiles; on the offline default run, whose head is small, it costs more
(docs/notes/benchmarks-history.md, "The LM head only where a target is").
"""
from __future__ import annotations

import jax
import numpy as np

CAPACITY_STEPS = 8  # when on: widths in multiples of T/8


def predicting(loss_mask: np.ndarray) -> np.ndarray:
    """bool [B, T]: position t predicts a target (loss_mask[:, t + 1] is set); T-1 never does."""
    out = np.zeros(loss_mask.shape, bool)
    out[:, :-1] = np.asarray(loss_mask)[:, 1:] > 0
    return out


def capacity(max_targets: int, length: int, steps: int = CAPACITY_STEPS) -> int:
    """`max_targets` rounded up to a multiple of length/steps, at least one step, at most
    `length`; steps = 0: `length` (every position)."""
    if steps == 0:
        return length
    quantum = -(-length // steps)
    return min(length, max(1, -(-int(max_targets) // quantum)) * quantum)


def agreed_max(local: int) -> int:
    """`local` on a single-host job; on a multi-host job the largest over every host,
    so all hosts build the same [B, K] shape."""
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(local))))


def target_index(loss_mask: np.ndarray, k: int | None = None, steps: int = CAPACITY_STEPS) -> np.ndarray:
    """int32 [B, K]: each row's target-predicting positions in order, then T-1 as filler.

    K defaults to `capacity(largest row count over all hosts, T, steps)`; a given K smaller than
    a row's target count is an error (those targets would silently drop out of the loss).
    """
    mask = predicting(loss_mask)
    b, t = mask.shape
    counts = mask.sum(axis=1)
    if k is None:
        k = t if steps == 0 else capacity(agreed_max(int(counts.max(initial=0))), t, steps)
    if not 0 < k <= t:
        raise ValueError(f"target capacity {k} is outside 1..{t} (the batch length)")
    if counts.max(initial=0) > k:
        row = int(np.argmax(counts))
        raise ValueError(f"row {row} has {int(counts[row])} targets, more than the capacity {k}")
    if k == t:  # every position: the step runs the plain head and reads no index
        return np.tile(np.arange(t, dtype=np.int32), (b, 1))
    order = np.argsort(~mask, axis=1, kind="stable")[:, :k]  # targets first, in position order
    return np.where(np.arange(k)[None] < counts[:, None], order, t - 1).astype(np.int32)

