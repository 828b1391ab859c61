"""The command lines: `python -m comd_jax.train`, `python -m comd_jax.eval`, `python -m comd_jax.serve`.

They run from the package, installed or in place; the checkout's launch/*.py are the same
commands by their README names. Each module parses flags and calls the library.
"""
