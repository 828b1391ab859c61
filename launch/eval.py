"""Evaluate: `python launch/eval.py --config=configs/comd.py[:preset] --checkpoint=DIR --benchmark=NAME`.

The checkout's name for `python -m comd_jax.eval` (comd_jax/cli/eval.py: benchmarks, flags, multi-host).
"""
from comd_jax.cli.eval import run

if __name__ == "__main__":
    run()
