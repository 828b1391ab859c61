"""Timing helpers for CPU benchmarks on a shared, noisy machine.

Each contender runs in alternating rounds, so a burst of load from another
process hits both; the best round is reported (as `timeit` advises: slower
rounds measure the neighbours, not the code), the median next to it.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict


def interleaved_rounds(contenders: Dict[str, Callable[[], None]], rounds: int, steps: int) -> dict:
    """Seconds per call of each contender: {'name': {'best', 'median', 'cpu_best', 'rounds'}}.

    `contenders` map a name to a callable that runs one step and blocks until done.
    The order alternates between rounds so neither side always runs first.
    `cpu_best` is the process CPU time (all threads) of the best round's steps:
    unlike wall time it barely moves when other processes share the cores."""
    names = list(contenders)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = contenders[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                fn()
            wall[name].append((time.perf_counter() - start) / steps)
            cpu[name].append((time.process_time() - start_cpu) / steps)
    return {n: {"best": min(wall[n]), "median": statistics.median(wall[n]), "cpu_best": min(cpu[n]),
                "rounds": wall[n]} for n in names}


def matmul_peak_flops(n: int = 2048, reps: int = 10) -> dict:
    """The machine's float32 matrix-multiply rate as XLA reaches it, from the best
    of `reps` square n x n matmuls (large enough to be compute bound):
    {'wall': FLOP/s, 'cpu': FLOP per CPU-second}."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()
    best = best_cpu = float("inf")
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return {"wall": 2 * n ** 3 / best, "cpu": 2 * n ** 3 / best_cpu}
