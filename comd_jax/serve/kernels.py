"""The engine's compiled pieces: prefill, cache insertion and multi-step decode.

All take the model as (a `ModelHandle`, its state's leaves) and merge inside the
trace: plain `jax.jit` then sees only arrays, which keeps per-call host overhead
low (one decode call per K tokens is the hot loop of the server). Shapes come from
buckets chosen by the engine, so each function compiles a handful of times.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from comd_jax.models import decoder
from comd_jax.serve import sampling


class ModelHandle:
    """The static half of the engine's model: its graphdef and its state's tree structure,
    hashed once. As a static argument an nnx GraphDef is hashed on every call (~1.7 ms under
    cProfile for the default teacher), and an nnx State is flattened with its keys sorted;
    both run on the host before the device starts, once per kernel call. Equal handles
    (another engine on the same model) still share their compiled kernels; the engine's own
    handle compares by identity."""

    __slots__ = ("graphdef", "treedef", "_hash")

    def __init__(self, graphdef, state):
        self.graphdef, self.treedef = graphdef, jax.tree.structure(state)
        self._hash = hash((graphdef, self.treedef))

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return self is other or (isinstance(other, ModelHandle) and self._hash == other._hash
                                 and self.graphdef == other.graphdef and self.treedef == other.treedef)

    def merge(self, leaves):
        return nnx.merge(self.graphdef, jax.tree.unflatten(self.treedef, leaves))


@functools.partial(jax.jit, static_argnums=0)
def prefill(handle: ModelHandle, leaves, ids_kt, pixels, offsets_k, lengths_k, keys_k2, temp_k, top_p_k, want_top=False,
            want_prompt=False):
    """One pass over k right-padded prompts → (first token [k], its logprob [k], the top
    logprobs [k, K] and their ids [k, K], the prompts' own KV cache, the prompt's scores).
    Each row's first token is drawn with generated-token index 0.

    The scores (`sampling.score_prompt`, zeros unless `want_prompt`, a traced bool like
    `want_top`): at position t, how the model rates prompt token t + 1."""
    model = handle.merge(leaves)
    k, t = ids_kt.shape
    cache = model.init_cache(k, t)
    positions = jnp.broadcast_to(jnp.arange(t), (k, t))
    logits, cache = model.decode(model.embed(ids_kt, pixels, offsets_k), positions, cache)
    last = logits[jnp.arange(k), lengths_k - 1]
    token, logp, top, top_ids = sampling.choose(last, keys_k2, jnp.zeros((k,), jnp.int32), temp_k, top_p_k,
                                                want_top)
    scores = sampling.score_prompt(logits, ids_kt, want_prompt)
    return token, logp, top, top_ids, cache, scores


@functools.lru_cache(maxsize=None)
def zeros(shape: tuple, dtype, sharding):
    """A compiled maker of zero arrays laid out by `sharding` (one per shape: the warm-up's too)."""
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


@functools.partial(jax.jit, donate_argnums=0)
def carry(new, old):
    """`old`'s rows and slots copied into the larger zero cache `new` (the engine's growth)."""
    b, s = decoder.cache_rows(old), decoder.cache_slots(old)
    return {"k": tuple(n.at[:b, :, :, :s].set(o) for n, o in zip(new["k"], old["k"])),
            "v": tuple(n.at[:b, :, :s].set(o) for n, o in zip(new["v"], old["v"]))}


@functools.partial(jax.jit, donate_argnums=0)
def insert(cache, prompt_cache, slots_k):
    """Write prompt caches into rows `slots_k` of the running cache (slots 0..T-1; the
    layouts of `comd_jax.models.decoder.cache_shapes`).

    Rows may repeat (the engine pads a prefill group with copies of its last
    request); copies hold identical values, so the scatter stays deterministic."""
    t = decoder.cache_slots(prompt_cache)

    def put(running, prompt, name):
        where = (slots_k, slice(None), slice(None), slice(0, t)) if name == "k" else (slots_k, slice(None), slice(0, t))
        return running.at[where].set(prompt.astype(running.dtype))

    return {name: tuple(put(r, p, name) for r, p in zip(cache[name], prompt_cache[name])) for name in cache}


@functools.partial(jax.jit, static_argnums=(0, 9), donate_argnums=2)
def decode(handle: ModelHandle, leaves, cache, tok_b, pos_b, count_b, keys_b2, temp_b, top_p_b, steps: int,
           want_top=False):
    """`steps` tokens for every row: tokens [B, steps], logprobs [B, steps], the top
    logprobs [B, steps, K] and their ids [B, steps, K], cache.

    Row b feeds tok_b at position pos_b, then its own samples; positions past
    the cache are clamped to its last slot (only rows that already finished
    get there, and the engine discards their tokens)."""
    model = handle.merge(leaves)
    last_slot = decoder.cache_slots(cache) - 1

    def step(carry, j):
        tok, cache = carry
        pos = jnp.minimum(pos_b + j, last_slot)
        logits, cache = model.decode(model.text.embed_tokens(tok[:, None]), pos[:, None], cache)
        nxt, logp, top, top_ids = sampling.choose(logits[:, 0], keys_b2, count_b + j, temp_b, top_p_b, want_top)
        return (nxt, cache), (nxt, logp, top, top_ids)

    (_, cache), (toks, logps, top, top_ids) = jax.lax.scan(step, (tok_b, cache), jnp.arange(steps))
    return toks.T, logps.T, top.transpose(1, 0, 2), top_ids.transpose(1, 0, 2), cache
