"""`python -m comd_jax.eval`: comd_jax/cli/eval.py."""
from comd_jax.cli.eval import run

run()
