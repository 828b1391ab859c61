"""Benchmarks: one script per headline figure, ours next to a peer, the ratio printed last.

- `python -m comd_jax.bench.train_step`    our train step vs transformers' PyTorch LLaVA (CPU)
- `python -m comd_jax.bench.compile_check` paper-scale step compiled from shapes: does it fit?
- `python -m comd_jax.bench.load_memory`   peak host memory of load_pretrained vs transformers

Results and the machine they ran on live in BENCHMARKS.md.
"""
