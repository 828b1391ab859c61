"""The top-k distillation loss (train/kd.py) and its place in the train step: zero when the
student is its teacher, the analytic KL's gradient on a tiny case, and in the jitted step the
same KD value whether the head runs everywhere or only where it is needed, over microbatches
too, and nothing at all where no position is scored."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comd_jax import sharding as shd
from comd_jax.models import DecoderConfig, VisionConfig, VLMConfig
from comd_jax.train import kd as kd_lib
from comd_jax.train.kd import KDConfig
from comd_jax.train.optim import OptimConfig
from comd_jax.train.state import create_setup, init_state
from comd_jax.train.step import build_train_step, host_batch


def top_k(logp, k):
    ids = np.argsort(-logp, axis=-1)[..., :k]
    return np.take_along_axis(logp, ids, -1), ids.astype(np.int32)


def log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def bucket_kl(z, t_logp, t_ids, temperature, direction):
    """The analytic loss, written out in float64 for one position: k + 1 buckets, tempered alike."""
    q = np.exp(log_softmax(z))
    p = np.exp(np.asarray(t_logp, np.float64))
    p = np.append(p, max(1 - p.sum(), 0.0) + 1e-20)
    p = p / p.sum()
    qb = np.append(q[t_ids], max(1 - q[t_ids].sum(), 0.0) + 1e-20)
    qb = qb / qb.sum()
    pt = np.exp(log_softmax(np.log(p) / temperature))
    qt = np.exp(log_softmax(np.log(qb) / temperature))
    a, b = (pt, qt) if direction == "forward" else (qt, pt)
    return temperature ** 2 * float(np.sum(a * (np.log(a) - np.log(b))))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_zero_when_the_student_is_its_teacher(temperature, direction):
    logits = np.random.default_rng(0).normal(size=(3, 7, 50)).astype(np.float32) * 3
    t_logp, t_ids = top_k(log_softmax(logits).astype(np.float32), 8)
    kl = kd_lib.topk_kl(jnp.asarray(logits), jnp.asarray(t_logp), jnp.asarray(t_ids), temperature, direction)
    assert kl.shape == (3, 7) and float(jnp.abs(kl).max()) < 1e-5
    # float16 storage (the pool's) keeps it near zero; another teacher does not.
    kl16 = kd_lib.topk_kl(jnp.asarray(logits), jnp.asarray(t_logp.astype(np.float16)), jnp.asarray(t_ids),
                          temperature, direction)
    assert float(jnp.abs(kl16).max()) < 2e-3
    other = kd_lib.topk_kl(jnp.asarray(np.roll(logits, 1, axis=-1)), jnp.asarray(t_logp), jnp.asarray(t_ids), temperature, direction)
    assert float(other.min()) > 1e-3


def test_forward_gradient_is_softmax_minus_the_bucketed_teacher():
    """d KL(p || q(z)) / dz_m = q_m - p_m on the teacher's ids, q_m - p_tail q_m / q_tail elsewhere."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=12)
    t_logp, t_ids = top_k(log_softmax(rng.normal(size=12) * 2), 4)
    grad = np.asarray(jax.grad(lambda x: kd_lib.topk_kl(x, jnp.asarray(t_logp, jnp.float32),
                                                        jnp.asarray(t_ids)))(jnp.asarray(z, jnp.float32)))
    q = np.exp(log_softmax(z))
    p = np.exp(t_logp)
    q_tail, p_tail = 1 - q[t_ids].sum(), 1 - p.sum()
    want = q * (1 - p_tail / q_tail)
    want[t_ids] = q[t_ids] - p
    np.testing.assert_allclose(grad, want, atol=1e-6)


@pytest.mark.parametrize("temperature, direction", [(1.0, "reverse"), (2.0, "forward"), (2.0, "reverse")])
def test_gradient_matches_the_analytic_loss_by_finite_differences(temperature, direction):
    rng = np.random.default_rng(2)
    z = rng.normal(size=10)
    t_logp, t_ids = top_k(log_softmax(rng.normal(size=10) * 2), 3)
    loss = float(kd_lib.topk_kl(jnp.asarray(z, jnp.float32), jnp.asarray(t_logp, jnp.float32), jnp.asarray(t_ids),
                                temperature, direction))
    assert abs(loss - bucket_kl(z, t_logp, t_ids, temperature, direction)) < 1e-5
    grad = np.asarray(jax.grad(lambda x: kd_lib.topk_kl(x, jnp.asarray(t_logp, jnp.float32), jnp.asarray(t_ids),
                                                        temperature, direction))(jnp.asarray(z, jnp.float32)))
    eps, numeric = 1e-5, np.zeros_like(z)
    for m in range(len(z)):
        up, down = z.copy(), z.copy()
        up[m] += eps
        down[m] -= eps
        numeric[m] = (bucket_kl(up, t_logp, t_ids, temperature, direction)
                      - bucket_kl(down, t_logp, t_ids, temperature, direction)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=2e-5)


def test_config_limits():
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 20\]"):
        KDConfig(top_k=21)
    with pytest.raises(ValueError, match="mode must be one of"):
        KDConfig(mode="none")
    assert KDConfig(mode="on_policy").direction == "reverse" and KDConfig().direction == "forward"
    with pytest.raises(ValueError, match="both 0: the loss would train on nothing"):
        KDConfig(alpha=0.0, ce_weight=0.0)
    with pytest.raises(ValueError, match="ce_weight >= 0"):
        KDConfig(ce_weight=-1.0)


# -- in the train step -------------------------------------------------------------------------
K = 5


def _tiny():
    return VLMConfig(text=DecoderConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2,
                                        num_heads=4, num_kv_heads=2),
                     vision=VisionConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                                         image_size=16, patch_size=4),
                     image_token_id=95)


@pytest.fixture(scope="module")
def setup():
    optim = OptimConfig(learning_rate=1e-2, warmup_ratio=0.0, total_steps=10, eps=1e-3)
    return create_setup(_tiny(), optim, shd.make_mesh((1, 1, 1), jax.devices()[:1]), "fsdp")


@pytest.fixture(scope="module")
def step_of(setup):
    """Each (accumulation, KD) step built once for the module: a new closure is a new compile."""
    built = {}

    def get(accum=1, kd=None):
        if (accum, kd) not in built:
            built[accum, kd] = build_train_step(setup, accum, kd=kd)
        return built[accum, kd]

    return get


KD = KDConfig(mode="topk", alpha=0.5, temperature=2.0, top_k=K)


def _batch(cfg, scored_rows=(0, 1, 2, 3), b=4, t=40):
    rng = np.random.default_rng(3)
    ids = rng.integers(2, 90, (b, t)).astype(np.int32)
    ids[:, 1:1 + cfg.num_image_tokens] = cfg.image_token_id
    loss = np.zeros((b, t), np.float32)
    for row, start in enumerate((22, 30, 35, 25)):
        loss[row, start:] = 1
    kd_mask = loss * np.isin(np.arange(b), scored_rows)[:, None]
    teacher = log_softmax(rng.normal(size=(b, t, 96)) * 2).astype(np.float32)
    kd_logp, kd_ids = top_k(teacher, K)
    return dict(input_ids=ids, attention_mask=np.ones((b, t), np.int32), loss_mask=loss,
                pixel_values=rng.normal(size=(b, 1, 16, 16, 3)).astype(np.float32),
                kd_ids=kd_ids, kd_logp=kd_logp.astype(np.float16), kd_mask=kd_mask)


def _kd_by_hand(setup, params, batch, kd):
    """The mean top-k KL over scored positions, from the model's full logits."""
    logits = setup.model(params)(batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
    kl = kd_lib.topk_kl(logits[:, :-1], batch["kd_logp"][:, 1:], batch["kd_ids"][:, 1:], kd.temperature,
                        kd.direction)
    w = batch["kd_mask"][:, 1:]
    return float(jnp.sum(kl * w) / w.sum())


@pytest.mark.parametrize("mode", ["topk", "on_policy"])
def test_the_steps_kd_term_equals_the_loss_by_hand_at_any_head_width_and_accumulation(setup, step_of, mode):
    kd = dataclasses.replace(KD, mode=mode)
    raw = _batch(setup.model_cfg)
    params = init_state(setup, seed=1).params
    want = _kd_by_hand(setup, params, raw, kd)
    got = []
    for capacity, accum in ((0, 1), (8, 1), (8, 2)) if mode == "topk" else ((8, 2),):
        batch = host_batch(raw, setup, capacity, kd=kd)
        _, metrics = step_of(accum, kd)(init_state(setup, seed=1), batch, jax.random.key(0))
        got.append((float(metrics["kd_loss"]), float(metrics["loss"])))
        assert float(metrics["kd_positions"]) == raw["kd_mask"][:, 1:].sum()
    for kd_loss, loss in got:
        assert abs(kd_loss - want) < 1e-4 * max(1.0, want)
        assert abs(loss - got[0][1]) < 1e-4  # the cross-entropy metric is the same number
    _, base = step_of()(init_state(setup, seed=1), host_batch(raw, setup, 0), jax.random.key(0))
    assert abs(float(base["loss"]) - got[0][1]) < 1e-5 and "kd_loss" not in base


def test_kd_moves_the_update_and_an_unscored_batch_trains_as_without_kd(setup, step_of):
    kd = KD  # the topk case above compiled this step already
    step, plain = step_of(1, kd), step_of()

    def params_after(step_fn, batch, **kw):
        state, _ = step_fn(init_state(setup, seed=2), host_batch(batch, setup, 8, **kw), jax.random.key(0))
        return jax.tree.leaves(state.params)

    base = params_after(plain, _batch(setup.model_cfg))
    unscored = params_after(step, _batch(setup.model_cfg, scored_rows=()), kd=kd)
    scored = params_after(step, _batch(setup.model_cfg), kd=kd)
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(base, unscored))
    assert max(float(np.abs(a - b).max()) for a, b in zip(base, scored)) > 1e-4


def test_ce_weight_zero_trains_on_the_teachers_distribution_alone(setup, step_of):
    """Without the cross-entropy, only scored positions move the weights (weight decay is 0 here)."""
    kd = dataclasses.replace(KD, ce_weight=0.0)
    step = step_of(1, kd)

    def moved(batch):
        start = jax.tree.leaves(init_state(setup, seed=2).params)
        state, metrics = step(init_state(setup, seed=2), host_batch(batch, setup, 8, kd=kd), jax.random.key(0))
        assert float(metrics["loss"]) > 0  # the cross-entropy is still reported, just not trained on
        return max(float(np.abs(a - b).max()) for a, b in zip(start, jax.tree.leaves(state.params)))

    assert moved(_batch(setup.model_cfg, scored_rows=())) == 0.0
    assert moved(_batch(setup.model_cfg)) > 1e-4


def test_a_kd_stage_refuses_a_batch_without_teacher_scores(setup):
    batch = _batch(setup.model_cfg)
    del batch["kd_logp"]
    with pytest.raises(ValueError, match=r"no \['kd_logp'\]: this stage distils with kd='topk'"):
        host_batch(batch, setup, 0, kd=KDConfig(top_k=K))
