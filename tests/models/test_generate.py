"""Greedy generation with our KV cache yields transformers' `generate` tokens.

One batch holds an image prompt and a shorter text-only prompt (right-padded on
our side); transformers runs each row alone, unpadded, as the ground truth.
"""
import numpy as np
import pytest
import torch

import hf_tiny as H
from comd_jax import load_pretrained
from comd_jax.models.generate import greedy_generate

NEW = 10
PAD = 0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    ref = H.llava(31, H.llama_kwargs(), H.clip_vision_kwargs())
    ref.generation_config.eos_token_id = None  # each test names its own EOS
    directory = tmp_path_factory.mktemp("generate") / "llava"
    ref.save_pretrained(directory)
    return ref, load_pretrained(str(directory))


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(5)
    text = lambda n: list(rng.integers(3, H.IMAGE_TOKEN, n))
    rows = [[1] + text(2) + [H.IMAGE_TOKEN] * H.PATCHES + text(3), [1] + text(5)]
    ids = np.zeros((2, len(rows[0])), np.int64)
    mask = np.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, :len(row)], mask[b, :len(row)] = row, 1
    pixels = rng.standard_normal((1, 3, H.IMAGE_SIZE, H.IMAGE_SIZE)).astype(np.float32)
    return rows, ids, mask, pixels


def transformers_rows(ref, rows, pixels, eos):
    """Each prompt generated alone; new tokens padded to NEW as `generate` pads finished rows."""
    out = np.full((len(rows), NEW), PAD)
    for b, row in enumerate(rows):
        kw = {"pixel_values": torch.from_numpy(pixels)} if H.IMAGE_TOKEN in row else {}
        with torch.no_grad():
            seq = ref.generate(input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
                               max_new_tokens=NEW, do_sample=False, eos_token_id=eos, pad_token_id=PAD, **kw)
        new = seq[0, len(row):].numpy()
        out[b, :len(new)] = new
    return out


def test_greedy_matches_transformers(models, prompts):
    ref, ours = models
    rows, ids, mask, pixels = prompts
    unused = 94  # an EOS the model never emits here (checked below), so all NEW tokens run
    want = transformers_rows(ref, rows, pixels, eos=unused)
    # Row 1 also emits the image placeholder id, which decoding must embed as a plain token.
    assert unused not in want and len(np.unique(want)) > 5 and H.IMAGE_TOKEN in want, want
    got = greedy_generate(ours, ids, pixels, max_new_tokens=NEW, eos_token_id=unused,
                          attention_mask=mask, pad_token_id=PAD)
    np.testing.assert_array_equal(got, want)


def test_stops_at_eos_and_pads(models, prompts):
    ref, ours = models
    rows, ids, mask, pixels = prompts
    free = transformers_rows(ref, rows, pixels, eos=94)
    # EOS := a token row 1 emits first at step >= 3 and row 0 never does: row 1 stops
    # mid-way and pads while row 0 runs on.
    step = next(i for i in range(3, NEW - 1) if free[1, i] not in free[1, :i] and free[1, i] not in free[0])
    eos = int(free[1, step])
    want = transformers_rows(ref, rows, pixels, eos=eos)
    assert (want[1, step + 1:] == PAD).all() and (want[0] == free[0]).all()
    got = greedy_generate(ours, ids, pixels, max_new_tokens=NEW, eos_token_id=[eos],
                          attention_mask=mask, pad_token_id=PAD)
    np.testing.assert_array_equal(got, want)


def test_rejects_left_padding(models, prompts):
    _, ours = models
    _, ids, mask, pixels = prompts
    with pytest.raises(ValueError, match="right-padded"):
        greedy_generate(ours, ids, pixels, attention_mask=mask[:, ::-1])
