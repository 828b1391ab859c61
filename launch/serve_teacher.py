"""Serve the teacher: `python launch/serve_teacher.py --config=configs/comd.py[:preset] --port=8000`.

The checkout's name for `python -m comd_jax.serve` (comd_jax/cli/serve.py: flags, keys, one process).
"""
from comd_jax.cli.serve import run

if __name__ == "__main__":
    run()
