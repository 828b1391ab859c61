"""Image preprocessing against transformers' CLIP processor; TFDS feature layouts."""

from __future__ import annotations

import io
import json

import numpy as np
from conftest import png_bytes
from PIL import Image

from comd_jax.data import errors, images
from comd_jax.data.tfds_source import TfdsSource


def clip_processor(size):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )


def test_config_read_from_transformers_file(tmp_path):
    clip_processor(24).save_pretrained(str(tmp_path))
    config = images.ImageProcessorConfig.from_pretrained(str(tmp_path))
    assert config.size == 24 and config.mean == images.CLIP_MEAN and config.std == images.CLIP_STD
    assert config.background == (122, 116, 104)  # LLaVA-1.5's padding colour


def test_llava_preprocessing_matches_pad_then_clip_processor(tmp_path):
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 255, (20, 36, 3), np.uint8))
    config = images.ImageProcessorConfig(size=24)
    ours = images.preprocess(wide, config)
    # LLaVA-1.5: expand2square with the mean colour, then the CLIP processor.
    square = Image.new("RGB", (36, 36), config.background)
    square.paste(wide, (0, 8))
    theirs = clip_processor(24)(square, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    assert ours.shape == (24, 24, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # The padded band is exactly the mean colour, i.e. ~0 after normalization.
    assert np.abs(ours[:2]).max() < 0.02  # int(mean * 255) rounds down


def test_unpadded_resize_matches_clip_processor():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 45, 3), np.uint8))
    config = images.ImageProcessorConfig(size=16, pad_to_square=False)
    theirs = clip_processor(16)(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(images.preprocess(image, config), theirs, atol=1e-5)


def test_load_image_errors(tmp_path):
    assert images.load_image(png_bytes()).size == (12, 8)
    for bad, reason in (
        (str(tmp_path / "absent.png"), errors.MISSING_IMAGE),
        (b"not an image", errors.UNREADABLE_IMAGE),
        (png_bytes()[:40], errors.UNREADABLE_IMAGE),
        (np.zeros((4, 4), np.float32), errors.UNREADABLE_IMAGE),
    ):
        try:
            images.load_image(bad)
        except errors.SampleError as e:
            assert e.reason == reason
        else:
            raise AssertionError(f"{bad!r:.40} loaded")


def test_tfds_source_accepts_other_feature_layouts():
    turns = [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"}]
    records = [
        # JSON-string conversations and encoded image bytes.
        {"id": b"a", "image": png_bytes(), "conversations": json.dumps(turns).encode()},
        # Several images as a [N, H, W, 3] tensor, turns as a list of dicts.
        {"id": b"b", "image": np.zeros((2, 4, 4, 3), np.uint8), "conversations": turns},
        # Text only, Sequence feature decoded as dict of lists.
        {"id": b"c", "conversations": {"from": [b"human", b"gpt"], "value": [b"Hi", b"Yo"]}},
        {"id": b"d", "conversations": {"from": [b"human"], "value": [b"Hi", b"Yo"]}},
    ]
    source = TfdsSource(records, name="fake")
    a, b, c, d = (source[i] for i in range(4))
    assert a.conversations == turns and a.images == (png_bytes(),)
    assert len(b.images) == 2 and b.images[0].shape == (4, 4, 3)
    assert c.images == () and c.conversations == [
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Yo"},
    ]
    assert d.error[0] == errors.MALFORMED_SAMPLE and d.origin == "fake[3]"
