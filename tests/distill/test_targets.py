"""The LM head (and the last decoder block's queries and MLP) run only at positions that
predict a target: the host's index is right, the kept hidden states equal the full
decoder's there, and the loss and gradients equal those of the full-length head. (tests/test_sharding.py
runs the gathered head on 8-device meshes and across microbatches.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.traverse_util import flatten_dict

from comd_jax import sharding as shd
from comd_jax.models import DecoderConfig, VisionConfig, VLMConfig
from comd_jax.train import targets
from comd_jax.train.optim import OptimConfig
from comd_jax.train.state import create_setup, init_state
from comd_jax.train.step import host_batch, token_losses


def test_index_lists_each_rows_predicting_positions_in_order_then_filler():
    mask = np.zeros((3, 16), np.float32)
    mask[0, [5, 6, 7, 12]] = 1  # targets at 5..7 and 12: predicted from 4..6 and 11
    mask[1, 9:] = 1
    # row 2: no targets at all
    index = targets.target_index(mask)
    assert index.dtype == np.int32 and index.shape == (3, 8)  # 7 targets, rounded up to 16/8 = 2
    assert index[0].tolist() == [4, 5, 6, 11] + [15] * 4
    assert index[1].tolist() == [8, 9, 10, 11, 12, 13, 14, 15]
    assert index[2].tolist() == [15] * 8


def test_a_target_at_position_0_is_never_predicted():
    mask = np.ones((1, 8), np.float32)  # BOS has no position before it
    assert targets.target_index(mask).tolist() == [[0, 1, 2, 3, 4, 5, 6]]  # 7 targets: position 7 predicts none


@pytest.mark.parametrize("count, length, want", [(0, 256, 32), (1, 256, 32), (32, 256, 32), (33, 256, 64),
                                                 (143, 256, 160), (255, 256, 256), (5, 20, 6), (19, 20, 20)])
def test_capacity_rounds_up_to_an_eighth_of_the_length(count, length, want):
    assert targets.capacity(count, length) == want


def test_zero_steps_means_every_position():
    mask = np.zeros((2, 16), np.float32)
    mask[:, 12:] = 1
    assert targets.capacity(4, 16, steps=0) == 16
    index = targets.target_index(mask, steps=0)  # the step runs the plain full head
    assert index.tolist() == [list(range(16))] * 2


def test_a_capacity_below_a_rows_target_count_is_refused_by_row():
    mask = np.zeros((2, 16), np.float32)
    mask[1, 4:] = 1
    with pytest.raises(ValueError, match="row 1 has 12 targets, more than the capacity 8"):
        targets.target_index(mask, 8)
    with pytest.raises(ValueError, match="outside 1..16"):
        targets.target_index(mask, 17)


def _tiny():
    return VLMConfig(
        text=DecoderConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                           num_kv_heads=2),
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, image_size=16,
                            patch_size=4),
        image_token_id=95)


def _batch(cfg, b=4, t=48, seed=0):
    """Rows with different answer lengths and some right padding, so rows need different
    numbers of the index's slots and the filler is used."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, 90, (b, t)).astype(np.int32)
    ids[:, 1:1 + cfg.num_image_tokens] = cfg.image_token_id
    mask = np.ones((b, t), np.int32)
    mask[1, -9:] = 0
    loss = np.zeros((b, t), np.float32)
    for row, start in enumerate((20, 30, 40, 25)):
        loss[row, start:] = mask[row, start:]
    pixels = rng.normal(size=(b, 1, 16, 16, 3)).astype(np.float32)
    return dict(input_ids=ids, attention_mask=mask, loss_mask=loss, pixel_values=pixels)


def _full_width(batch):
    b, t = batch["input_ids"].shape
    return {**batch, "target_index": np.tile(np.arange(t, dtype=np.int32), (b, 1))}


@pytest.fixture(scope="module")
def setup():
    optim = OptimConfig(learning_rate=1e-2, warmup_ratio=0.0, total_steps=10, eps=1e-3)
    return create_setup(_tiny(), optim, shd.make_mesh((1, 1, 1), jax.devices()[:1]), "fsdp")


def test_loss_and_gradients_equal_the_full_length_heads(setup):
    batch = host_batch(_batch(setup.model_cfg), setup, capacity_steps=8)
    assert batch["target_index"].shape == (4, 30)  # 28 targets at most, in steps of 48/8 = 6
    params = init_state(setup, seed=1).params

    def summed(p, b):
        nll, count, correct = token_losses(setup.model(p), b)
        return nll, (count, correct)

    grad = jax.jit(jax.value_and_grad(summed, has_aux=True))
    (nll, (count, correct)), g = grad(params, batch)
    (nll_full, (count_full, correct_full)), g_full = grad(params, _full_width(batch))
    assert float(count) == float(count_full) == float(batch["loss_mask"][:, 1:].sum()) == 28 + 9 + 8 + 23
    assert float(correct) == float(correct_full)
    np.testing.assert_allclose(float(nll), float(nll_full), rtol=1e-6)
    flat, flat_full = flatten_dict(g), flatten_dict(g_full)
    assert flat.keys() == flat_full.keys()
    for path in flat:
        # The last block sums its attention in another order when it keeps positions:
        # float32 rounding, relative to each gradient's scale.
        want = np.asarray(flat_full[path])
        np.testing.assert_allclose(np.asarray(flat[path]), want, rtol=1e-4, atol=max(1e-7, 1e-6 * np.abs(want).max()),
                                   err_msg="/".join(map(str, path)))
    assert float(jnp.abs(flat[("text", "lm_head", "kernel")]).max()) > 0


def test_a_batch_without_targets_weighs_nothing(setup):
    batch = _batch(setup.model_cfg)
    batch["loss_mask"][:] = 0
    batch = host_batch(batch, setup, capacity_steps=8)
    assert batch["target_index"].shape == (4, 6) and (batch["target_index"] == 47).all()
    nll, count, correct = jax.jit(lambda p, b: token_losses(setup.model(p), b))(init_state(setup, seed=4).params,
                                                                               batch)
    assert (float(nll), float(count), float(correct)) == (0.0, 0.0, 0.0)


def _decoder(layers, **kw):
    from comd_jax.models.decoder import Decoder

    cfg = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=layers, num_heads=4,
                        num_kv_heads=2, max_position_embeddings=64)
    return Decoder(cfg, rngs=nnx.Rngs(3), **kw)


@pytest.mark.parametrize("layers, kw", [(3, {}), (3, {"unroll": True}), (2, {"remat": True}), (1, {})])
def test_kept_positions_equal_the_full_decoder_there(layers, kw):
    decoder = _decoder(layers, **kw)
    b, t = 3, 40
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(b, t, 32)), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask = np.ones((b, t), np.int32)
    mask[2, -7:] = 0  # right padding
    mask[1, :3] = 0  # left padding
    keep = jnp.asarray([[0, 5, 6, 39], [3, 20, 21, 22], [10, 32, 33, 39]], jnp.int32)  # filler and pads too
    run = nnx.jit(lambda d, *args, keep_bk=None: d(*args, keep_bk=keep_bk))
    full, _ = run(decoder, x, positions, jnp.asarray(mask))
    kept, cache = run(decoder, x, positions, jnp.asarray(mask), keep_bk=keep)
    assert kept.shape == (b, 4, 32) and cache is None
    want = np.take_along_axis(np.asarray(full), np.asarray(keep)[..., None], axis=1)
    np.testing.assert_allclose(np.asarray(kept), want, rtol=1e-5, atol=1e-5)


def test_kept_positions_need_no_cache():
    decoder = _decoder(1)
    cache = decoder.init_cache(1, 8)
    with pytest.raises(ValueError, match="keep_bk is for the training forward"):
        decoder(jnp.zeros((1, 2, 32)), jnp.zeros((1, 2), jnp.int32), cache=cache, keep_bk=jnp.zeros((1, 1), jnp.int32))
