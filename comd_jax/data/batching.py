"""Examples -> fixed-shape numpy batches, padded to one of a few length buckets.

The batch contract (what the model and train step consume):
  input_ids       int32   [B, T]  right-padded with the pad id
  attention_mask  int32   [B, T]  1 on real tokens
  loss_mask       float32 [B, T]  1.0 where input_ids[:, t] is a target
                                  (logits[:, t-1] predict it)
  pixel_values    float32 [B, M, H, W, 3]  normalized, zeros in empty slots
  image_mask      bool    [B, M]  which image slots hold an image
and, with the teacher's scores (`kd_k` > 0, distill.kd), at the position of the token they rate:
  kd_ids          int32   [B, T, k]  the teacher's k most likely tokens
  kd_logp         float16 [B, T, k]  their log-probabilities
  kd_mask         float32 [B, T]     1.0 where the teacher rated the token
T is the smallest bucket that fits the longest example, so a jitted step
compiles once per bucket rather than once per batch.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence

import numpy as np

from comd_jax.data.processing import Example

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class BatchShape:
    batch_size: int
    length_buckets: tuple[int, ...]
    max_images: int
    image_size: int
    pad_id: int
    kd_k: int = 0

    def __post_init__(self):
        if self.batch_size <= 0 or self.max_images <= 0 or not self.length_buckets:
            raise ValueError(f"bad batch shape: {self}")
        if list(self.length_buckets) != sorted(set(self.length_buckets)):
            raise ValueError(f"length_buckets must be strictly increasing: {self.length_buckets}")

    def bucket_for(self, length: int) -> int:
        i = bisect.bisect_left(self.length_buckets, length)
        if i == len(self.length_buckets):
            raise ValueError(
                f"length {length} exceeds the largest bucket {self.length_buckets[-1]}"
            )
        return self.length_buckets[i]


def make_batch(examples: Sequence[Example], shape: BatchShape) -> Batch:
    """Pads examples into one batch; missing rows (a final partial batch) stay empty."""
    if not 0 < len(examples) <= shape.batch_size:
        raise ValueError(f"{len(examples)} examples for batch size {shape.batch_size}")
    b, m, s = shape.batch_size, shape.max_images, shape.image_size
    length = shape.bucket_for(max(e.num_tokens for e in examples))
    batch = {
        "input_ids": np.full((b, length), shape.pad_id, np.int32),
        "attention_mask": np.zeros((b, length), np.int32),
        "loss_mask": np.zeros((b, length), np.float32),
        "pixel_values": np.zeros((b, m, s, s, 3), np.float32),
        "image_mask": np.zeros((b, m), bool),
    }
    if shape.kd_k:
        batch["kd_ids"] = np.zeros((b, length, shape.kd_k), np.int32)
        batch["kd_logp"] = np.zeros((b, length, shape.kd_k), np.float16)
        batch["kd_mask"] = np.zeros((b, length), np.float32)
    for row, example in enumerate(examples):
        if shape.kd_k and example.kd is not None:
            positions, ids, logp = example.kd
            batch["kd_ids"][row, positions] = ids[:, :shape.kd_k]
            batch["kd_logp"][row, positions] = logp[:, :shape.kd_k]
            batch["kd_mask"][row, positions] = 1.0
        n, k = example.num_tokens, example.pixel_values.shape[0]
        batch["input_ids"][row, :n] = example.input_ids
        batch["attention_mask"][row, :n] = 1
        batch["loss_mask"][row, :n] = example.loss_mask
        batch["pixel_values"][row, :k] = example.pixel_values
        batch["image_mask"][row, :k] = True
    return batch


def pad_to_length(batch: Batch, length: int, pad_id: int) -> Batch:
    """Right-pads the token arrays of a batch to `length` (for cross-host agreement)."""
    current = batch["input_ids"].shape[1]
    if length < current:
        raise ValueError(f"cannot pad length {current} down to {length}")
    if length == current:
        return batch
    extra = ((0, 0), (0, length - current))
    padded = dict(batch)
    padded["input_ids"] = np.pad(batch["input_ids"], extra, constant_values=pad_id)
    padded["attention_mask"] = np.pad(batch["attention_mask"], extra)
    padded["loss_mask"] = np.pad(batch["loss_mask"], extra)
    for key in ("kd_ids", "kd_logp", "kd_mask"):
        if key in batch:
            padded[key] = np.pad(batch[key], extra + ((0, 0),) * (batch[key].ndim - 2))
    return padded
