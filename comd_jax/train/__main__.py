"""`python -m comd_jax.train`: comd_jax/cli/train.py."""
from comd_jax.cli.train import run

run()
