"""The pure train step `(state, batch, rng) -> (state, metrics)`, jitted in one place.

Loss: next-token cross-entropy on positions whose `loss_mask` is 1, normalized
by the number of target tokens in the whole global batch, so gradient
accumulation over microbatches gives exactly the full-batch gradient. The LM
head runs at the positions `target_index` lists: every position, or, when a
stage opts in, only those that predict a target (targets.py). A stage with `kd`
adds the teacher's top-k KL at the positions it scored (kd.py), in the same pass.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from comd_jax import sharding as shd
from comd_jax.models.layers import take_positions
from comd_jax.train import kd as kd_lib
from comd_jax.train import targets as targets_lib
from comd_jax.train.kd import KDConfig
from comd_jax.train.optim import TRAIN, schedule
from comd_jax.train.state import Setup, TrainState

def cross_entropy(logits_btv, targets_bt):
    """(next-token NLL, "target holds the top logit") per position, float32.

    The same arithmetic as optax's softmax_cross_entropy_with_integer_labels, but
    the target logit is picked with a one-hot select instead of take_along_axis:
    its gradient is then an elementwise select that fuses into the softmax
    gradient, where take_along_axis's is a scatter into a zeroed [B, T, V] array
    (serial on CPU). "Top logit" replaces argmax == target: the same test barring
    exact ties, and it reuses the max the softmax needs anyway.
    """
    top = jnp.max(logits_btv, axis=-1, keepdims=True)
    shifted = logits_btv - jax.lax.stop_gradient(top)
    is_target = targets_bt[..., None] == jnp.arange(logits_btv.shape[-1], dtype=targets_bt.dtype)
    target = jnp.sum(jnp.where(is_target, shifted, 0.0), axis=-1)
    nll = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1)) - target
    return nll, target >= 0.0


def _head(model, batch):
    """(logits, index or None): the LM head at every position, or with `target_index` [B, K] (see
    targets.py) and K < T only at the listed positions (the last block's queries and MLP too)."""
    index = batch.get("target_index")
    if index is None or index.shape[1] == batch["input_ids"].shape[1]:
        return model(batch["input_ids"], batch.get("pixel_values"), batch["attention_mask"]), None
    hidden = model.hidden_states(batch["input_ids"], batch.get("pixel_values"), batch["attention_mask"], keep=index)
    return model.text.logits(hidden), index


def _at_head(x, index):
    """A per-position batch array shifted to the predicting position, then where the head ran.
    Shift the small arrays, not the [B, T, V] logits: slicing the logits copies them forward and
    pads their gradient backward. The last position weighs 0."""
    x = jnp.pad(x[:, 1:], ((0, 0), (0, 1)) + ((0, 0),) * (x.ndim - 2))
    return x if index is None else take_positions(x, index)


def _cross_entropy_sums(logits, index, batch):
    targets = _at_head(batch["input_ids"], index)
    weights = _at_head(batch["loss_mask"].astype(jnp.float32), index)
    nll, correct = cross_entropy(logits, targets)
    return jnp.sum(nll * weights), jnp.sum(weights), jnp.sum(correct.astype(jnp.float32) * weights)


def token_losses(model, batch):
    """Summed next-token NLL, target count and correct count over one (micro)batch."""
    logits, index = _head(model, batch)
    return _cross_entropy_sums(logits, index, batch)


def kd_sums(logits, index, batch, kd: KDConfig):
    """Summed top-k KL and its position count: the teacher's scores (`kd_logp`, `kd_ids`
    [B, T, k], at the position of the token they rate, like `loss_mask`) where `kd_mask` is set,
    at the positions the head ran."""
    weights = _at_head(batch["kd_mask"].astype(jnp.float32), index)
    kl = kd_lib.topk_kl(logits, _at_head(batch["kd_logp"], index), _at_head(batch["kd_ids"], index),
                        kd.temperature, kd.direction)
    return jnp.sum(kl * weights), jnp.sum(weights)


def _freeze(params: dict, labels: dict) -> dict:
    """Frozen leaves get no gradient, so XLA drops their backward pass."""
    return jax.tree.map(lambda p, l: p if l == TRAIN else jax.lax.stop_gradient(p), params, labels)


def _microbatches(batch: dict, accum: int, setup: Setup) -> dict:
    """[B, ...] → [accum, B/accum, ...]; microbatch k takes rows k, k+accum, ... so every
    device keeps an equal share of each microbatch (no resharding)."""
    batch_axes = dict(setup.rules).get("batch", shd.BATCH)

    def split(x):
        b = x.shape[0]
        if b % accum:
            raise ValueError(f"global batch {b} is not divisible by grad_accum_steps={accum}")
        x = x.reshape(b // accum, accum, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(
            x, NamedSharding(setup.mesh, P(None, batch_axes, *([None] * (x.ndim - 2)))))

    return jax.tree.map(split, batch)


def build_train_step(setup: Setup, grad_accum_steps: int = 1, kd: KDConfig | None = None) -> Callable:
    """The jitted train step with in/out shardings and the state donated.

    With `kd`, the loss is `kd.ce_weight` times the cross-entropy plus `kd.alpha` times the
    top-k KL (kd.py) per scored position, in the
    same forward pass and at the same head positions as the cross-entropy; its batch arrays
    (`KD_NDIMS`) are sharded like the rest, so KD costs no extra compile."""
    lr_schedule = schedule(setup.optim_cfg)

    def grads_of(params, batch, totals):
        def loss_fn(p):
            logits, index = _head(setup.model(_freeze(p, setup.labels)), batch)
            nll, _, correct = _cross_entropy_sums(logits, index, batch)
            aux = {"nll": nll / totals[0], "correct": correct}
            if kd is None:
                return aux["nll"], aux
            kl, _ = kd_sums(logits, index, batch, kd)
            aux["kd"] = kl / totals[1]
            return kd.ce_weight * aux["nll"] + kd.alpha * aux["kd"], aux

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        del rng  # LLaVA trains without dropout; kept in the signature for variants that sample
        total = jnp.maximum(jnp.sum(batch["loss_mask"][:, 1:].astype(jnp.float32)), 1.0)
        scored = jnp.maximum(jnp.sum(batch["kd_mask"][:, 1:].astype(jnp.float32)), 1.0) if kd else None
        if grad_accum_steps == 1:
            (_, aux), grads = grads_of(state.params, batch, (total, scored))
        else:
            def body(carry, micro):
                aux_acc, grad_acc = carry
                (_, aux), grads = grads_of(state.params, micro, (total, scored))
                return (jax.tree.map(jnp.add, aux_acc, aux), jax.tree.map(jnp.add, grad_acc, grads)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            start = {"nll": 0.0, "correct": 0.0, **({"kd": 0.0} if kd else {})}
            (aux, grads), _ = jax.lax.scan(body, (start, zeros), _microbatches(batch, grad_accum_steps, setup))
        loss, correct = aux["nll"], aux["correct"]
        trainable_grads = jax.tree.map(lambda g, l: g if l == TRAIN else None, grads, setup.labels)
        updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u, l: p + u.astype(p.dtype) if l == TRAIN else p,
                              state.params, updates, setup.labels)
        metrics = {
            "loss": loss,
            "accuracy": correct / total,
            "target_tokens": total,
            "grad_norm": optax.global_norm(trainable_grads),
            "learning_rate": lr_schedule(state.step),
        }
        if kd is not None:  # "loss" stays the cross-entropy, comparable with runs without KD
            metrics.update(kd_loss=aux["kd"], kd_positions=scored)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    replicated = NamedSharding(setup.mesh, P())
    return jax.jit(train_step,
                   in_shardings=(setup.state_shardings, batch_shardings(setup, kd), replicated),
                   out_shardings=(setup.state_shardings, replicated),
                   donate_argnums=(0,))


BATCH_NDIMS = {"input_ids": 2, "attention_mask": 2, "loss_mask": 2, "pixel_values": 5, "target_index": 2}
# The teacher's top-k scores of the token at each position (kd.py), where `kd_mask` is set.
KD_NDIMS = {"kd_ids": 3, "kd_logp": 3, "kd_mask": 2}


def batch_keys(setup: Setup, kd: KDConfig | None = None) -> tuple:
    """What the step consumes: pixel_values only when the model has a vision tower;
    target_index (which positions the LM head runs on) is added by `host_batch`; the KD arrays
    with `kd`."""
    keys = tuple(k for k in BATCH_NDIMS if k != "pixel_values" or setup.model_cfg.vision is not None)
    return keys + (tuple(KD_NDIMS) if kd is not None else ())


def host_batch(batch: dict, setup: Setup, capacity_steps: int = 0, kd: KDConfig | None = None) -> dict:
    """A pipeline batch (host numpy) → exactly the arrays the step takes, with the
    LM head's `target_index` computed from the loss mask (and the KD mask: the head runs
    wherever either needs it) (`capacity_steps`: see targets.py; 0 = every position, e.g.
    8 = target positions in widths of T/8). On a multi-host job every process must call
    this for every batch (the hosts agree on the index's width)."""
    missing = [k for k in batch_keys(setup, kd) if k != "target_index" and k not in batch]
    if missing:
        raise ValueError(f"the batch has no {missing}" + (
            f": this stage distils with kd={kd.mode!r}, and its pipeline attached no teacher scores"
            if kd is not None and set(missing) & set(KD_NDIMS) else ""))
    out = {k: np.asarray(batch[k]) for k in batch_keys(setup, kd) if k != "target_index"}
    head = out["loss_mask"] if kd is None else np.maximum(out["loss_mask"], out["kd_mask"].astype(out["loss_mask"].dtype))
    out["target_index"] = targets_lib.target_index(head, steps=capacity_steps)
    return out


def batch_shardings(setup: Setup, kd: KDConfig | None = None) -> dict:
    """Every batch array split along its leading (batch) axis."""
    axes = dict(setup.rules).get("batch", shd.BATCH)
    ndims = {**BATCH_NDIMS, **KD_NDIMS}
    return {k: NamedSharding(setup.mesh, P(axes, *([None] * (ndims[k] - 1)))) for k in batch_keys(setup, kd)}


def build_eval_step(setup: Setup) -> Callable:
    """Summed loss/targets/correct on a batch, for held-out loss."""
    def eval_step(params, batch):
        nll, count, correct = token_losses(setup.model(params), batch)
        return {"nll_sum": nll, "target_tokens": count, "correct": correct}

    replicated = NamedSharding(setup.mesh, P())
    return jax.jit(eval_step, in_shardings=(setup.state_shardings.params, batch_shardings(setup)),
                   out_shardings=replicated)
