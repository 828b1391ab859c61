"""`python -m comd_jax.serve`: comd_jax/cli/serve.py."""
from comd_jax.cli.serve import run

run()
