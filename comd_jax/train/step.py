"""The pure train step `(state, batch, rng) -> (state, metrics)`, jitted in one place.

Loss: next-token cross-entropy on positions whose `loss_mask` is 1, normalized
by the number of target tokens in the whole global batch, so gradient
accumulation over microbatches gives exactly the full-batch gradient. The LM
head runs at the positions `target_index` lists: every position, or, when a
stage opts in, only those that predict a target (targets.py).
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
from comd_jax.train import targets as targets_lib
from comd_jax.train.optim import TRAIN, schedule
from comd_jax.train.state import Setup, TrainState

def _shift_left(x):
    """x[:, 1:] padded back to length T with zeros."""
    return jnp.pad(x[:, 1:], ((0, 0), (0, 1)))


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


def token_losses(model, batch):
    """Summed next-token NLL, target count and correct count over one (micro)batch.

    With `target_index` [B, K] (see targets.py) and K < T, the LM head and the last
    block's queries and MLP run only at the listed positions; without it, or with
    K == T, at every position.
    """
    # Shift the small targets, not the [B, T, V] logits: slicing the logits copies
    # them forward and pads their gradient backward. The last position weighs 0.
    targets = _shift_left(batch["input_ids"])
    weights = _shift_left(batch["loss_mask"].astype(jnp.float32))
    index = batch.get("target_index")
    if index is None or index.shape[1] == targets.shape[1]:
        logits = model(batch["input_ids"], batch.get("pixel_values"), batch["attention_mask"])
    else:
        hidden = model.hidden_states(batch["input_ids"], batch.get("pixel_values"), batch["attention_mask"],
                                     keep=index)
        logits = model.text.logits(hidden)
        targets, weights = take_positions(targets, index), take_positions(weights, index)
    nll, correct = cross_entropy(logits, targets)
    return jnp.sum(nll * weights), jnp.sum(weights), jnp.sum(correct.astype(jnp.float32) * weights)


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


def build_train_step(setup: Setup, grad_accum_steps: int = 1) -> Callable:
    """The jitted train step with in/out shardings and the state donated."""
    lr_schedule = schedule(setup.optim_cfg)

    def grads_of(params, batch, total_tokens):
        def loss_fn(p):
            nll, _, correct = token_losses(setup.model(_freeze(p, setup.labels)), batch)
            return nll / total_tokens, correct

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        del rng  # LLaVA trains without dropout; kept in the signature for variants that sample
        total = jnp.maximum(jnp.sum(batch["loss_mask"][:, 1:].astype(jnp.float32)), 1.0)
        if grad_accum_steps == 1:
            (loss, correct), grads = grads_of(state.params, batch, total)
        else:
            def body(carry, micro):
                loss_acc, correct_acc, grad_acc = carry
                (loss, correct), grads = grads_of(state.params, micro, total)
                return (loss_acc + loss, correct_acc + correct, jax.tree.map(jnp.add, grad_acc, grads)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (loss, correct, grads), _ = jax.lax.scan(
                body, (0.0, 0.0, zeros), _microbatches(batch, grad_accum_steps, setup))
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
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    replicated = NamedSharding(setup.mesh, P())
    return jax.jit(train_step,
                   in_shardings=(setup.state_shardings, batch_shardings(setup), replicated),
                   out_shardings=(setup.state_shardings, replicated),
                   donate_argnums=(0,))


BATCH_NDIMS = {"input_ids": 2, "attention_mask": 2, "loss_mask": 2, "pixel_values": 5, "target_index": 2}


def batch_keys(setup: Setup) -> tuple:
    """What the step consumes: pixel_values only when the model has a vision tower;
    target_index (which positions the LM head runs on) is added by `host_batch`."""
    return tuple(k for k in BATCH_NDIMS if k != "pixel_values" or setup.model_cfg.vision is not None)


def host_batch(batch: dict, setup: Setup, capacity_steps: int = 0) -> dict:
    """A pipeline batch (host numpy) → exactly the arrays the step takes, with the
    LM head's `target_index` computed from the loss mask (`capacity_steps`: see
    targets.py; 0 = every position, e.g. 8 = target positions in widths of T/8).
    On a multi-host job every process must call this for every batch (the hosts
    agree on the index's width)."""
    out = {k: np.asarray(batch[k]) for k in batch_keys(setup) if k != "target_index"}
    out["target_index"] = targets_lib.target_index(out["loss_mask"], steps=capacity_steps)
    return out


def batch_shardings(setup: Setup) -> dict:
    """Every batch array split along its leading (batch) axis."""
    axes = dict(setup.rules).get("batch", shd.BATCH)
    return {k: NamedSharding(setup.mesh, P(axes, *([None] * (BATCH_NDIMS[k] - 1))))
            for k in batch_keys(setup)}


def build_eval_step(setup: Setup) -> Callable:
    """Summed loss/targets/correct on a batch, for held-out loss."""
    def eval_step(params, batch):
        nll, count, correct = token_losses(setup.model(params), batch)
        return {"nll_sum": nll, "target_tokens": count, "correct": correct}

    replicated = NamedSharding(setup.mesh, P())
    return jax.jit(eval_step, in_shardings=(setup.state_shardings.params, batch_shardings(setup)),
                   out_shardings=replicated)
