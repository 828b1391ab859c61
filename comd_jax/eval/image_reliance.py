"""Does a model read the image? Its held-out loss with each example's own image
against the same batch with the images moved one row along (every example gets
another scene's picture; text, masks and targets unchanged).

A model that answers from the question alone scores the same either way
(`gap` ≈ 0); one that looks at the picture loses more with the wrong one. On
the offline world this is the first thing to check when a teacher is no
better than its student: a teacher that does not look cannot teach looking.
"""
from __future__ import annotations

from typing import Iterable, Optional

import jax.numpy as jnp
import numpy as np
from flax import nnx

from comd_jax.train.step import token_losses


@nnx.jit
def _losses(model, batch):
    nll, count, _ = token_losses(model, batch)
    other = dict(batch, pixel_values=jnp.roll(batch["pixel_values"], 1, axis=0))
    nll_other, _, _ = token_losses(model, other)
    return nll, nll_other, count


def image_reliance(model, batches: Iterable[dict], max_batches: Optional[int] = 4) -> dict:
    """{"loss", "loss_other_images", "gap", "tokens"} over up to `max_batches` held-out batches
    (None: all of them; each with pixel_values and at least two rows)."""
    keys = ("input_ids", "pixel_values", "attention_mask", "loss_mask")
    own = other = tokens = 0.0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        if batch["pixel_values"].shape[0] < 2:
            continue
        # Host arrays, as the answerer passes them: jit places them by the model's mesh.
        nll, nll_other, count = _losses(model, {k: np.asarray(batch[k]) for k in keys})
        own, other, tokens = own + float(nll), other + float(nll_other), tokens + float(count)
    if not tokens:
        raise ValueError("image_reliance: no held-out batch with images and two or more rows")
    return {"loss": own / tokens, "loss_other_images": other / tokens, "gap": (other - own) / tokens,
            "tokens": int(tokens)}
