"""Timing helpers for CPU benchmarks on a shared, noisy machine.

Each contender runs in alternating rounds, so a burst of load from another
process hits both; the best round is reported (as `timeit` advises: slower
rounds measure the neighbours, not the code), the median next to it.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict


def interleaved_rounds(contenders: Dict[str, Callable[[], None]], rounds: int, steps: int,
                       settle: int = 1, between: Callable[[], None] = lambda: None) -> dict:
    """Seconds per call of each contender: {'name': {'best', 'median', 'cpu_best', 'rounds'}}.

    `contenders` map a name to a callable that runs one step and blocks until done.
    The order alternates between rounds so neither side always runs first. Each
    turn starts with `settle` untimed steps: the first step after the other side
    ran pays for its idle-spinning threads and evicted caches, which is the
    switch's cost, not either step's. `between` runs after every round (e.g. a
    peak measurement that should see the same spread of load as the steps).
    `cpu_best` is the lowest per-step process CPU time (all threads) over the
    rounds: unlike wall time it moves little when other processes share the cores."""
    names = list(contenders)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = contenders[name]
            for _ in range(settle):
                fn()
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                fn()
            wall[name].append((time.perf_counter() - start) / steps)
            cpu[name].append((time.process_time() - start_cpu) / steps)
        between()
    return {n: {"best": min(wall[n]), "median": statistics.median(wall[n]), "cpu_best": min(cpu[n]),
                "rounds": wall[n]} for n in names}


class MatmulPeak:
    """The machine's float32 matrix-multiply rate as XLA reaches it: square n x n
    matmuls (large enough to be compute bound). Call `measure()` as often as
    convenient; `wall` and `cpu` keep the best seen (FLOP/s, FLOP per CPU-second),
    so a peak sampled across a whole run is not hostage to one busy moment."""

    def __init__(self, n: int = 2048):
        import jax
        import jax.numpy as jnp

        self.flops = 2 * n ** 3
        self.a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        self.b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        self.matmul = jax.jit(lambda x, y: x @ y)
        self.matmul(self.a, self.b).block_until_ready()
        self.wall = self.cpu = 0.0

    def measure(self, reps: int = 5) -> None:
        for _ in range(reps):
            start, start_cpu = time.perf_counter(), time.process_time()
            self.matmul(self.a, self.b).block_until_ready()
            self.wall = max(self.wall, self.flops / (time.perf_counter() - start))
            self.cpu = max(self.cpu, self.flops / max(time.process_time() - start_cpu, 1e-9))
