"""The CoMD presets; they live in the package, in comd_jax/configs/comd.py, so that an installed
comd_jax has them too. Every key, its default and what it does: docs/config.md.

  python launch/train.py --config=configs/comd.py[:smoke|:paper|:ablation|:teacher]
"""
from comd_jax.configs.comd import get_config  # noqa: F401
