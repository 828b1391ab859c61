"""Data for comd_jax: templates, tokenization with loss masks, sources, input pipeline.

Submodules are imported explicitly (``from comd_jax.data import pipeline``) so
that importing one piece does not pull in TFDS or grain.
"""
