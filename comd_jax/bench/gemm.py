"""The train-step benchmark's GEMMs in isolation: XLA:CPU's float32 kernels vs torch's, same shapes.

    python -m comd_jax.bench.gemm [--rounds=5 --steps=5 --hidden=512 ...]   (train_step's size flags)

The train step (`comd_jax.bench.train_step`) spends most of its time in matrix
multiplies, and there the two sides do not call the same kernels: XLA:CPU runs
its own (YNNPACK/Eigen), torch calls MKL. This script times every GEMM shape
the decoder's train step runs, each in its three forms (forward x·W, the
data gradient g·Wᵀ, the weight gradient xᵀ·g), alone, one side after the other
in alternating rounds, and prints GFLOP/s per shape. Last, the ratio of the
total time of all of them, torch/ours, each shape counted as often as the step
runs it: how fast our step could be against torch if everything but the
GEMMs cost nothing on both sides. These are isolated, warm-cache figures. In
profiles of the steps, the same GEMMs ran slower on both sides, and MKL called
from our step through an XLA FFI call took as long as XLA's own kernels
(BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np


def step_gemms(size) -> list:
    """(name, m, k, n, count): the decoder's projections and LM head over batch × length tokens."""
    tokens = size.batch * size.seq_len
    head_dim = size.hidden // size.heads
    return [
        ("q/o", tokens, size.hidden, size.hidden, 2 * size.layers),
        ("k/v", tokens, size.hidden, head_dim * size.kv_heads, 2 * size.layers),
        ("gate/up", tokens, size.hidden, size.intermediate, 2 * size.layers),
        ("down", tokens, size.intermediate, size.hidden, size.layers),
        ("lm_head", tokens, size.hidden, size.vocab, 1),
    ]


def _forms(m: int, k: int, n: int, rng) -> dict:
    """The three GEMMs of one dense layer in a train step, as (a, b, transpose_a, transpose_b)."""
    x = rng.standard_normal((m, k), np.float32)
    w = rng.standard_normal((k, n), np.float32)
    g = rng.standard_normal((m, n), np.float32)
    return {"fwd": (x, w, False, False), "dgrad": (g, w, False, True), "wgrad": (x, g, True, False)}


def run(size, rounds: int = 5, steps: int = 5, seed: int = 0) -> dict:
    import jax
    import torch

    from comd_jax.bench import timing

    torch.set_num_threads(os.cpu_count() or 1)  # as the train-step benchmark's torch side
    rng = np.random.default_rng(seed)
    rows, total = [], {"ours": 0.0, "torch": 0.0}
    for name, m, k, n, count in step_gemms(size):
        for form, (a, b, ta, tb) in _forms(m, k, n, rng).items():
            ja, jb = jax.device_put(a), jax.device_put(b)
            ours_fn = jax.jit(lambda x, y, ta=ta, tb=tb: (x.T if ta else x) @ (y.T if tb else y))
            xa, xb = torch.from_numpy(a), torch.from_numpy(b)
            theirs_fn = lambda xa=xa, xb=xb, ta=ta, tb=tb: (xa.T if ta else xa) @ (xb.T if tb else xb)
            # Same operands, same product: a check that both sides time the same GEMM.
            np.testing.assert_allclose(np.asarray(ours_fn(ja, jb)), theirs_fn().numpy(), rtol=2e-3, atol=2e-3)
            times = timing.interleaved_rounds(
                {"ours": lambda: ours_fn(ja, jb).block_until_ready(), "torch": theirs_fn}, rounds, steps)
            flop = 2.0 * m * k * n
            row = {"gemm": name, "form": form, "m": m, "k": k, "n": n, "count": count}
            for side in ("ours", "torch"):
                row[f"{side}_gflops"] = flop / times[side]["best"] / 1e9
                total[side] += count * times[side]["best"]
            rows.append(row)
    return {"rows": rows, "total_s": total, "ratio": total["torch"] / total["ours"]}


def report(r: dict) -> None:
    print(f"{'gemm':8s} {'form':6s} {'m x k x n':>20s} {'per step':>8s} {'ours GFLOP/s':>13s} {'torch GFLOP/s':>14s}")
    for row in r["rows"]:
        shape = f"{row['m']}x{row['k']}x{row['n']}"
        print(f"{row['gemm']:8s} {row['form']:6s} {shape:>20s} {row['count']:8d} "
              f"{row['ours_gflops']:13.1f} {row['torch_gflops']:14.1f}")
    print(f"all GEMMs of one step: ours {r['total_s']['ours'] * 1e3:.1f} ms, torch {r['total_s']['torch'] * 1e3:.1f} ms")
    print(f"ratio (torch/ours GEMM time, isolated kernels): {r['ratio']:.3f}")


def main(argv=None) -> None:
    from comd_jax import cpu_env
    from comd_jax.bench.train_step import Size

    cpu_env.reexec_if_needed()  # the same process settings as the train-step benchmark
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="calls per round")
    for field in dataclasses.fields(Size):
        parser.add_argument(f"--{field.name}", type=int, default=field.default)
    args = parser.parse_args(argv)
    size = Size(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Size)})
    print(f"size: {size}")
    report(run(size, args.rounds, args.steps))


if __name__ == "__main__":
    main()
