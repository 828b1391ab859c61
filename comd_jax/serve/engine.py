"""Batched generation with continuous batching.

One scheduler thread owns the model and a KV cache of B rows and S slots
(`comd_jax.models.decoder.cache_shapes`).
Each turn it admits waiting requests into free rows (one prefill pass per
group of prompts, then their caches are written into their rows) and runs one
decode call of `chunk` tokens for every row. A sequence that ends frees its
row at once; the others continue untouched, because a token at position p
writes slot p of its own row and attends only slots <= p of that row.

B and S grow through fixed buckets as the load needs them (and shrink back
when the engine goes idle), and prompts are padded to length buckets, so
only a handful of shapes ever compile.

Two front doors share the same machinery:
- `await engine.generate(request)` (the server; many callers at once);
- `engine.generate_batch(requests)` (blocking; the student's batched answers
  during assessment).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import queue
import threading
from typing import Optional, Sequence as Seq

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from comd_jax import sharding as shd
from comd_jax.models.decoder import CACHE_AXES, cache_rows, cache_shapes, cache_slots
from comd_jax.serve import kernels
from comd_jax.serve.requests import Request, Result, Sequence



@dataclasses.dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 32  # rows decoding at once
    max_seq_len: int = 1024  # prompt + output tokens of one request
    batch_buckets: tuple = (1, 4, 8, 16, 32, 64)
    seq_buckets: tuple = (128, 256, 512, 1024, 2048, 4096)
    prompt_buckets: tuple = (32, 64, 128, 256, 512, 1024, 2048, 4096)
    prefill_group: tuple = (1, 2, 4, 8)  # prompts per prefill pass (bucketed)
    chunk: int = 8  # decode steps per compiled call (tokens past a stop are dropped)

    def __post_init__(self):
        for name in ("batch_buckets", "seq_buckets", "prompt_buckets", "prefill_group"):
            object.__setattr__(self, name, tuple(sorted(getattr(self, name))))
        if self.max_batch < 1 or self.chunk < 1:
            raise ValueError(f"max_batch and chunk must be >= 1: {self}")


def bucket(n: int, buckets: Seq[int], cap: Optional[int] = None) -> int:
    """The smallest bucket >= n (at most `cap`, which also serves when n outgrows every bucket)."""
    cap = cap if cap is not None else max(buckets)
    for b in buckets:
        if n <= b <= cap:
            return b
    if n > cap:
        raise ValueError(f"{n} exceeds the limit {cap}")
    return cap


class Engine:
    def __init__(self, model, tokenizer, config: EngineConfig = EngineConfig(), *, mesh=None, rules=None,
                 seed: int = 0):
        self.config = config
        self.tokenizer = tokenizer
        self.cfg = model.cfg
        # Our own module over the same arrays, with its decoder layers unstacked (the caller's
        # model is left as it is): the engine only runs cached passes.
        own = nnx.merge(*nnx.split(model))
        own.text.unstack_layers()
        self.graphdef, self.state = nnx.split(own)
        self.handle, self.leaves = kernels.ModelHandle(self.graphdef, self.state), jax.tree.leaves(self.state)
        self.mesh = mesh if mesh is not None else shd.make_mesh((1, 1, 1), jax.devices()[:1])
        self.rules = rules if rules is not None else shd.rules_for("fsdp")
        eos = tokenizer.eos_token_id
        self.eos_ids = frozenset([] if eos is None else np.atleast_1d(eos).tolist())
        self._rng = np.random.default_rng(seed)  # seeds for requests that bring none
        self._queue: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    # -- front doors ------------------------------------------------------------
    def submit(self, request: Request) -> concurrent.futures.Future:
        self.check(request)
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._stopping.is_set():
            future.set_exception(RuntimeError("engine is shut down"))
        else:
            self._queue.put((request, future))
        return future

    async def generate(self, request: Request) -> Result:
        return await asyncio.wrap_future(self.submit(request))

    def generate_batch(self, requests: Seq[Request]) -> list:
        futures = [self.submit(r) for r in requests]
        return [f.result() for f in futures]

    def check(self, request: Request) -> None:
        """Raises ValueError (said to the caller as a 4xx) for a request the engine cannot run."""
        total = len(request.prompt_ids) + request.params.max_tokens
        if len(request.prompt_ids) < 1:
            raise ValueError("empty prompt")
        if total > self.config.max_seq_len:
            raise ValueError(f"prompt ({len(request.prompt_ids)} tokens) + max_tokens "
                             f"({request.params.max_tokens}) = {total} exceeds the limit {self.config.max_seq_len}")
        images = 0 if request.pixels is None else len(request.pixels)
        placeholders = int(np.sum(np.asarray(request.prompt_ids) == self.cfg.image_token_id))
        if images * self.cfg.num_image_tokens != placeholders and self.cfg.vision is not None:
            raise ValueError(f"{images} image(s) but {placeholders} image tokens in the prompt")

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Finish what is in flight, fail what still waits, stop the thread."""
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the scheduler -------------------------------------------------------------
    def _loop(self) -> None:
        self._reset()
        waiting: list = []
        while True:
            block = not self._active and not waiting
            if self._stopping.is_set() and block:
                break
            waiting += self._drain(block)
            waiting = self._admit(waiting)
            if self._active:
                self._step()
        for _, future in waiting + self._drain(False):
            future.set_exception(RuntimeError("engine shut down before the request started"))

    def _drain(self, block: bool) -> list:
        """Everything queued now (waiting up to 0.5 s for the first item when idle)."""
        items = []
        try:
            if block:
                items.append(self._queue.get(timeout=0.5))
            while True:
                items.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return [item for item in items if item is not None]  # None only wakes the loop

    def _reset(self) -> None:
        self._active: dict = {}  # slot -> (Sequence, future)
        self._cache = None
        c = self.config
        self._rows = dict(tok=np.zeros(c.max_batch, np.int32), pos=np.zeros(c.max_batch, np.int32),
                          count=np.zeros(c.max_batch, np.int32), keys=np.zeros((c.max_batch, 2), np.uint32),
                          temp=np.zeros(c.max_batch, np.float32), top_p=np.ones(c.max_batch, np.float32))

    def _admit(self, waiting: list) -> list:
        free = [s for s in range(self.config.max_batch) if s not in self._active]
        take, rest = waiting[:len(free)], waiting[len(free):]
        if self._stopping.is_set():  # graceful shutdown: no new work, in-flight finishes
            for _, future in waiting:
                future.set_exception(RuntimeError("engine is shutting down"))
            return []
        if not take:
            return rest
        seqs = [(Sequence(req, slot, self.eos_ids, self.tokenizer), fut) for (req, fut), slot in zip(take, free)]
        try:
            self._grow(max(s.slot for s, _ in seqs) + 1,
                       max(len(s.request.prompt_ids) + s.params.max_tokens for s, _ in seqs))
            group = self.config.prefill_group
            for i in range(0, len(seqs), max(group)):
                self._prefill(seqs[i:i + max(group)])
        except Exception as e:  # a bad batch fails its own requests, never the engine
            for seq, fut in seqs:
                self._active.pop(seq.slot, None)
                if not fut.done():
                    fut.set_exception(e)
        return rest

    def _grow(self, rows: int, length: int) -> None:
        """Make the cache at least [rows, length] (bucketed); never shrinks while busy."""
        c = self.config
        want_b = bucket(max([rows] + [s + 1 for s in self._active]), c.batch_buckets, c.max_batch)
        want_s = bucket(max(length, self._seq_need()), c.seq_buckets, c.max_seq_len)
        if self._cache is not None:
            b, s = cache_rows(self._cache), cache_slots(self._cache)
            if b >= want_b and s >= want_s:
                return
            want_b, want_s = max(b, want_b), max(s, want_s)
        new = self.empty_cache(want_b, want_s)
        self._cache = new if self._cache is None else kernels.carry(new, self._cache)  # the running rows too

    def empty_cache(self, rows: int, slots: int) -> dict:
        """A zero KV cache of `rows` x `slots`, laid out over the engine's mesh."""
        dtype = jnp.dtype(self.cfg.dtype)
        cache = {}
        for name, shape in cache_shapes(self.cfg.text, rows, slots).items():
            spec = list(shd.logical_to_spec(CACHE_AXES[name], shape, self.rules, self.mesh))
            while spec and spec[-1] is None:  # P() as the compiled kernels' outputs say it: one compile key
                spec.pop()
            zeros = kernels.zeros(shape, dtype, NamedSharding(self.mesh, PartitionSpec(*spec)))  # on the devices
            cache[name] = tuple(zeros() for _ in range(self.cfg.text.num_layers))
        return cache

    def _seq_need(self) -> int:
        return max((len(s.request.prompt_ids) + s.params.max_tokens for s, _ in self._active.values()), default=1)

    def _prefill(self, seqs: list) -> None:
        c = self.config
        k = bucket(len(seqs), c.prefill_group)
        padded = seqs + [seqs[-1]] * (k - len(seqs))  # copies of the last prompt: identical writes
        t = bucket(max(len(s.request.prompt_ids) for s, _ in seqs), c.prompt_buckets, c.max_seq_len)
        ids = np.zeros((k, t), np.int32)
        for i, (s, _) in enumerate(padded):
            ids[i, :len(s.request.prompt_ids)] = s.request.prompt_ids
        pixels, offsets = self._images(padded)
        for s, fut in seqs:
            self._set_row(s)
        rows = np.array([s.slot for s, _ in padded], np.int32)
        r = self._rows
        lengths = np.array([len(s.request.prompt_ids) for s, _ in padded], np.int32)
        want = np.bool_(any(s.params.top_logprobs for s, _ in seqs))  # a value, not a shape: one compile
        scored = np.bool_(any(s.params.prompt_logprobs is not None for s, _ in seqs))
        token, logp, top, top_ids, prompt_cache, scores = kernels.prefill(
            self.handle, self.leaves, ids, pixels, offsets, lengths, r["keys"][rows], r["temp"][rows],
            r["top_p"][rows], want, scored)
        self._cache = kernels.insert(self._cache, prompt_cache, rows)
        token, logp, top, top_ids = (np.asarray(a) for a in (token, logp, top, top_ids))
        scores = {name: np.asarray(a) for name, a in scores.items()} if scored else None
        for i, (s, fut) in enumerate(seqs):
            if s.params.prompt_logprobs is not None:
                s.score_prompt({name: a[i] for name, a in scores.items()})
            self._active[s.slot] = (s, fut)
            self._accept(s, fut, token[i:i + 1], logp[i:i + 1], (top[i:i + 1], top_ids[i:i + 1]))

    def _images(self, padded: list):
        """All images of the group in order (count padded to a power of two) and each
        row's first feature index; (None, None) for a text-only group."""
        per_row = [s.request.pixels if s.request.pixels is not None else None for s, _ in padded]
        counts = [0 if p is None else len(p) for p in per_row]
        if self.cfg.vision is None or sum(counts) == 0:
            return None, None
        stacked = np.concatenate([p for p in per_row if p is not None and len(p)], axis=0)
        n = 1 << (len(stacked) - 1).bit_length()
        stacked = np.concatenate([stacked, np.zeros((n - len(stacked),) + stacked.shape[1:], stacked.dtype)])
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]) * self.cfg.num_image_tokens
        # Padding copies of the last row reuse its images rather than appending more.
        for i in range(1, len(padded)):
            if padded[i][0] is padded[i - 1][0]:
                offsets[i] = offsets[i - 1]
        return stacked, offsets.astype(np.int32)

    def _set_row(self, s: Sequence) -> None:
        p, r = s.params, self._rows
        seed = p.seed if p.seed is not None else int(self._rng.integers(0, 2 ** 31))
        r["keys"][s.slot] = np.asarray(jax.random.PRNGKey(seed))
        r["temp"][s.slot], r["top_p"][s.slot] = p.temperature, p.top_p

    def _step(self) -> None:
        b = cache_rows(self._cache)
        r = self._rows
        for slot, (s, _) in self._active.items():
            r["tok"][slot], r["pos"][slot], r["count"][slot] = s.tokens[-1], s.next_position, len(s.tokens)
        wanted = any(s.params.top_logprobs for s, _ in self._active.values())
        try:
            toks, logps, top, top_ids, self._cache = kernels.decode(
                self.handle, self.leaves, self._cache, r["tok"][:b], r["pos"][:b], r["count"][:b],
                r["keys"][:b], r["temp"][:b], r["top_p"][:b], self.config.chunk, np.bool_(wanted))
            toks, logps = np.asarray(toks), np.asarray(logps)
            top, top_ids = (np.asarray(top), np.asarray(top_ids)) if wanted else (None, None)
        except Exception as e:  # fail everything in flight, keep serving
            for s, fut in list(self._active.values()):
                fut.set_exception(e)
            self._reset()
            return
        for slot, (s, fut) in list(self._active.items()):
            self._accept(s, fut, toks[slot], logps[slot], None if top is None else (top[slot], top_ids[slot]))
        if not self._active:
            self._cache = None  # idle: next load starts from the smallest buckets

    def _accept(self, s: Sequence, fut, tokens, logps, tops=None) -> None:
        try:
            done = s.extend(tokens, logps, tops)
            if done:
                self._active.pop(s.slot, None)
                fut.set_result(s.result())
        except Exception as e:
            self._active.pop(s.slot, None)
            fut.set_exception(e)
