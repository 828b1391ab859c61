"""The image-reliance probe: a model whose image features cannot depend on the
picture scores the same with another example's image (gap exactly 0); a model
that reads its images does not."""
import jax.numpy as jnp
import numpy as np
import pytest

from comd_jax.eval.image_reliance import image_reliance
from tests.tiny_vlm import IMAGE, PATCHES, tiny_vlm


def model():
    return tiny_vlm(seed=1)


def batches(n=2, rows=3):
    rng = np.random.default_rng(0)
    for _ in range(n):
        text = rng.integers(10, 96, size=(rows, 12))
        ids = np.concatenate([np.full((rows, PATCHES), IMAGE), text], axis=1).astype(np.int32)
        loss_mask = np.concatenate([np.zeros((rows, PATCHES)), np.ones((rows, 12))], axis=1).astype(bool)
        yield {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": loss_mask,
               "pixel_values": rng.normal(size=(rows, 1, 16, 16, 3)).astype(np.float32)}


def test_a_model_that_reads_its_images_loses_with_others():
    out = image_reliance(model(), batches())
    assert out["tokens"] == 2 * 3 * 12
    assert abs(out["gap"]) > 1e-4 and out["gap"] == pytest.approx(out["loss_other_images"] - out["loss"])


def test_a_model_blind_to_its_images_has_no_gap():
    blind = model()
    kernel = blind.projector.layers[0].kernel
    kernel.value = jnp.zeros_like(kernel.value)  # every image becomes the projector's bias
    out = image_reliance(blind, batches())
    assert out["gap"] == 0.0 and out["loss"] == out["loss_other_images"]


def test_no_usable_batch_is_an_error():
    one_row = (dict(b, pixel_values=b["pixel_values"][:1]) for b in batches(rows=1))
    with pytest.raises(ValueError, match="two or more rows"):
        image_reliance(model(), one_row)


def test_the_probe_reads_as_many_batches_as_asked():
    m = model()
    assert image_reliance(m, batches(n=6))["tokens"] == 4 * 3 * 12  # the default: four batches
    assert image_reliance(m, batches(n=6), max_batches=None)["tokens"] == 6 * 3 * 12
    assert image_reliance(m, batches(n=6), max_batches=2)["tokens"] == 2 * 3 * 12
