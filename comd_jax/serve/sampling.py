"""Per-request sampling settings and the jitted token chooser.

Each row of a decode batch carries its own temperature, top-p and PRNG key, so
requests with different settings share one compiled step. A row's random
draw for its i-th generated token uses fold_in(key, i): the same seed gives
the same tokens whichever other requests share the batch.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy (argmax)
    top_p: float = 1.0
    seed: Optional[int] = None  # None: the engine draws one
    stop: tuple = ()  # stop strings; the text ends before the first one found
    logprobs: bool = False
    top_logprobs: int = 0  # with logprobs: the k most likely tokens at each position (k <= TOP_LOGPROBS)
    # vLLM's prompt_logprobs: None = off; k = each prompt token's logprob and rank, with the k most
    # likely tokens at its position (0 = the token alone)
    prompt_logprobs: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 100.0:
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")
        if not 0 <= self.top_logprobs <= TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [0, {TOP_LOGPROBS}], got {self.top_logprobs}")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=True")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= TOP_LOGPROBS:
            raise ValueError(f"prompt_logprobs must be in [0, {TOP_LOGPROBS}], got {self.prompt_logprobs}")


def _top_p_filter(scaled_bv, top_p_b):
    """Logits outside the smallest set whose probability reaches top_p become -inf."""
    sorted_bv = -jnp.sort(-scaled_bv, axis=-1)
    probs = jax.nn.softmax(sorted_bv, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token: the first always stays
    keep = before < top_p_b[:, None]
    threshold = jnp.min(jnp.where(keep, sorted_bv, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(scaled_bv >= threshold, scaled_bv, -jnp.inf)


def _sample(logits_bv, keys_b2, counts_b, temp_b, top_p_b):
    scaled = logits_bv / jnp.maximum(temp_b, 1e-6)[:, None]
    filtered = _top_p_filter(scaled, top_p_b)
    keys = jax.vmap(jax.random.fold_in)(keys_b2, counts_b)
    return jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)


# The most top_logprobs a request may ask for (OpenAI's and vLLM's cap). A step computes
# this many when any row asks (a runtime branch, so asking compiles nothing new), else none.
TOP_LOGPROBS = 20


def _top(logp_bv):
    top, ids = jax.lax.top_k(logp_bv, min(TOP_LOGPROBS, logp_bv.shape[-1]))
    return top, ids.astype(jnp.int32)


def _no_top(logp_bv):
    k = min(TOP_LOGPROBS, logp_bv.shape[-1])
    return jnp.zeros((logp_bv.shape[0], k), logp_bv.dtype), jnp.zeros((logp_bv.shape[0], k), jnp.int32)


def choose(logits_bv, keys_b2, counts_b, temp_b, top_p_b, want_top=False):
    """(token [B] int32, its log-probability under the unscaled model [B] float32, the
    TOP_LOGPROBS largest log-probabilities [B, K] and their token ids [B, K]; zeros
    unless `want_top`, a traced bool: the top-k costs ~6% of a batch-128 decode step).

    Rows with temperature 0 take the argmax; the sort-based top-p path runs only
    when some row samples, so all-greedy batches stay cheap.
    """
    logits_bv = logits_bv.astype(jnp.float32)
    greedy = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    sampled = jax.lax.cond(jnp.any(temp_b > 0), _sample, lambda *a: greedy,
                           logits_bv, keys_b2, counts_b, temp_b, top_p_b)
    token = jnp.where(temp_b > 0, sampled, greedy)
    logp = jax.nn.log_softmax(logits_bv, axis=-1)
    top, top_ids = jax.lax.cond(want_top, _top, _no_top, logp)
    return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0], top, top_ids


def _scores(logits_btv, ids_bt):
    logp = jax.nn.log_softmax(logits_btv.astype(jnp.float32), axis=-1)
    nxt = jnp.pad(ids_bt[:, 1:], ((0, 0), (0, 1)))
    actual = jnp.take_along_axis(logp, nxt[..., None], axis=-1)
    rank = 1 + jnp.sum(logp > actual, axis=-1).astype(jnp.int32)  # vLLM's rank: 1 = the most likely
    top, top_ids = jax.lax.top_k(logp, min(TOP_LOGPROBS, logp.shape[-1]))
    return {"logprob": actual[..., 0], "rank": rank, "top": top, "top_ids": top_ids.astype(jnp.int32)}


def _no_scores(logits_btv, ids_bt):
    b, t = ids_bt.shape
    k = min(TOP_LOGPROBS, logits_btv.shape[-1])
    return {"logprob": jnp.zeros((b, t), jnp.float32), "rank": jnp.zeros((b, t), jnp.int32),
            "top": jnp.zeros((b, t, k), jnp.float32), "top_ids": jnp.zeros((b, t, k), jnp.int32)}


def score_prompt(logits_btv, ids_bt, want):
    """How the model rates each next prompt token (vLLM's `prompt_logprobs`): at position t, the
    log-probability of ids[t + 1] [B, T], its rank in the vocabulary [B, T], and the
    TOP_LOGPROBS largest log-probabilities [B, T, K] with their ids. The last position rates
    nothing. All zeros unless `want` (a traced bool, so asking compiles nothing new)."""
    return jax.lax.cond(want, _scores, _no_scores, logits_btv, ids_bt)
