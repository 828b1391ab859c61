"""Compile every shape the engine's scheduler can produce, before the first request.

The scheduler only ever runs bucketed shapes: decode over (rows, slots) buckets, prefill
over (prompts per group, prompt length, image count) buckets, and the insertion of a
group's prompt cache into the running cache. `plan()` lists them for a server's limits;
`warm_up()` runs each once on zeros, so a request never waits on XLA. With the
persistent compilation cache (`compilation_cache_dir`), a restarted server loads them.

`CompileCounter` counts the backend compiles that happen while it is open (the server
reports the count since its warm-up on /health: zero under any load once warm).
"""
from __future__ import annotations

import dataclasses
import logging
import time

import jax
import numpy as np

from comd_jax.serve import kernels
from comd_jax.serve.engine import bucket

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Backend compiles in this process while open (a `jax.monitoring` listener)."""

    def __init__(self):
        self.count = 0

    def _seen(self, event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            self.count += 1

    def __enter__(self) -> "CompileCounter":
        jax.monitoring.register_event_duration_secs_listener(self._seen)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._seen)


@dataclasses.dataclass(frozen=True)
class Plan:
    decode: tuple  # (rows, slots)
    prefill: tuple  # (prompts, length, images)
    insert: tuple  # (rows, slots, prompts, length)
    grow: tuple  # ((rows, slots) before, (rows, slots) after)

    @property
    def size(self) -> int:
        return len(self.decode) + len(self.prefill) + len(self.insert) + len(self.grow)


def _buckets(limit: int, buckets, cap: int) -> list:
    return sorted({bucket(n, buckets, cap) for n in range(1, limit + 1)})


def plan(config, *, max_prompt_tokens: int, max_images: int, vision: bool) -> Plan:
    """Every shape a server with these limits can run (`config`: its EngineConfig)."""
    c = config
    rows = _buckets(c.max_batch, c.batch_buckets, c.max_batch)
    slots = _buckets(c.max_seq_len, c.seq_buckets, c.max_seq_len)
    lengths = _buckets(min(max_prompt_tokens, c.max_seq_len), c.prompt_buckets, c.max_seq_len)
    groups = _buckets(min(max(c.prefill_group), c.max_batch), c.prefill_group, max(c.prefill_group))
    prefill = []
    for k in groups:
        # A group's images, padded to a power of two (Engine._images); 0: a text-only group.
        counts = {0} | ({1 << (n - 1).bit_length() for n in range(1, k * max_images + 1)} if vision else set())
        prefill += [(k, t, n) for t in lengths for n in sorted(counts)]
    insert = [(b, s, k, t) for b in rows for s in slots for k in groups for t in lengths if k <= b and t <= s]
    shapes = [(b, s) for b in rows for s in slots]
    grow = [(old, new) for old in shapes for new in shapes if new != old and new[0] >= old[0] and new[1] >= old[1]]
    return Plan(tuple(shapes), tuple(prefill), tuple(insert), tuple(grow))


def warm_up(engine, *, max_prompt_tokens: int, max_images: int) -> Plan:
    """Compile (and run once, on zeros) every shape of `plan()` for this engine."""
    cfg = engine.cfg
    p = plan(engine.config, max_prompt_tokens=max_prompt_tokens, max_images=max_images,
             vision=cfg.vision is not None)
    start = time.perf_counter()
    g, state = engine.handle, engine.leaves

    def rows_of(b):
        return (np.zeros(b, np.int32), np.zeros(b, np.int32), np.zeros(b, np.int32),
                np.zeros((b, 2), np.uint32), np.zeros(b, np.float32), np.ones(b, np.float32))

    for b, s in p.decode:
        tok, pos, count, keys, temp, top_p = rows_of(b)
        out = kernels.decode(g, state, engine.empty_cache(b, s), tok, pos, count, keys, temp, top_p,
                             engine.config.chunk, np.bool_(False))  # top_logprobs is a runtime branch
        jax.block_until_ready(out)
    for k, t, n in p.prefill:
        size = cfg.vision.image_size if cfg.vision is not None else 0
        pixels = np.zeros((n, size, size, 3), np.float32) if n else None
        offsets = np.zeros(k, np.int32) if n else None
        _, _, keys, temp, top_p = rows_of(k)[1:]
        jax.block_until_ready(kernels.prefill(g, state, np.zeros((k, t), np.int32), pixels, offsets,
                                              np.ones(k, np.int32), keys, temp, top_p, np.bool_(False),
                                              np.bool_(False)))
    for b, s, k, t in p.insert:
        prompt = engine.empty_cache(k, t)
        jax.block_until_ready(kernels.insert(engine.empty_cache(b, s), prompt, np.zeros(k, np.int32)))
    for old, new in p.grow:
        jax.block_until_ready(kernels.carry(engine.empty_cache(*new), engine.empty_cache(*old)))
    logging.info("engine warm-up: %d shapes (%d decode, %d prefill, %d insert, %d growth) in %.1f s", p.size,
                 len(p.decode), len(p.prefill), len(p.insert), len(p.grow), time.perf_counter() - start)
    return p
