"""Token-level distillation from a teacher's top-k log-probabilities (`distill.kd`).

The teacher is another process (our server or vLLM), so the student sees only its k most
likely tokens at each position (`prompt_logprobs`, k <= 20), never its full distribution.
Both distributions are therefore compared over the same k + 1 buckets: the teacher's k
tokens, and everything else as one tail bucket. The teacher's buckets are its k
probabilities and 1 minus their sum (renormalized, so rounding in float16 storage never
makes a negative tail); the student's are its softmax at those k ids and the rest of its
mass. Temperature T tempers both bucket distributions alike (softmax of log-bucket / T), so
a student equal to its teacher has zero loss at any T, and the loss is scaled by T**2 as in
Hinton et al. and tunix's `LogitStrategy`, which keeps its gradient's size independent of T.

- "forward": KL(teacher || student), on the teacher's answers (`kd = "topk"`).
- "reverse": KL(student || teacher), on the student's own answers scored by the teacher
  (`kd = "on_policy"`, as GKD and MiniLLM train).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

MODES = ("none", "topk", "on_policy")
MAX_TOP_K = 20  # what OpenAI-compatible endpoints send at most (top_logprobs / prompt_logprobs)
_TINY = 1e-20


@dataclasses.dataclass(frozen=True)
class KDConfig:
    mode: str = "topk"  # "topk" | "on_policy" (a stage without KD has no KDConfig)
    alpha: float = 1.0  # the KD term's weight beside the cross-entropy
    temperature: float = 1.0
    top_k: int = 20
    # The cross-entropy's weight: 0 trains on the teacher's distribution alone (word-level KD,
    # Kim & Rush); tunix's LogitStrategy mixes the two as (1 - a) CE + a KL.
    ce_weight: float = 1.0

    def __post_init__(self):
        if self.mode not in MODES[1:]:
            raise ValueError(f"kd mode must be one of {MODES[1:]}, got {self.mode!r}")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"kd top_k must be in [1, {MAX_TOP_K}], got {self.top_k}")
        if self.temperature <= 0 or self.alpha < 0 or self.ce_weight < 0:
            raise ValueError(f"kd temperature must be > 0, alpha and ce_weight >= 0: {self}")
        if self.alpha == 0 and self.ce_weight == 0:
            raise ValueError(f"kd alpha and ce_weight are both 0: the loss would train on nothing ({self})")

    @property
    def direction(self) -> str:
        return "reverse" if self.mode == "on_policy" else "forward"


def _with_tail(logp_k):
    """k log-probabilities → k + 1 log-buckets (the tail last), summing to one."""
    mass = jnp.sum(jnp.exp(logp_k), axis=-1, keepdims=True)
    tail = jnp.log(jnp.maximum(1.0 - mass, 0.0) + _TINY)
    buckets = jnp.concatenate([logp_k, tail], axis=-1)
    return buckets - jax.nn.logsumexp(buckets, axis=-1, keepdims=True)


def _tempered(log_buckets, temperature):
    return jax.nn.log_softmax(log_buckets / temperature, axis=-1)


def student_buckets(logits_tv, ids_tk):
    """The student's log-mass on the teacher's k ids and on everything else: [..., k + 1]."""
    logp = jax.nn.log_softmax(logits_tv.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, ids_tk, axis=-1)
    # The tail as log(1 - sum): computed from the picked mass, clamped against rounding.
    return _with_tail(picked)


def topk_kl(logits_tv, teacher_logp_tk, teacher_ids_tk, temperature: float = 1.0, direction: str = "forward"):
    """Per-position KL over the k + 1 buckets, times T**2 (float32, the leading dims of `logits`)."""
    teacher = _tempered(_with_tail(teacher_logp_tk.astype(jnp.float32)), temperature)
    student = _tempered(student_buckets(logits_tv, teacher_ids_tk), temperature)
    if direction == "forward":
        kl = jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1)
    elif direction == "reverse":
        kl = jnp.sum(jnp.exp(student) * (student - teacher), axis=-1)
    else:
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    return kl * temperature ** 2
