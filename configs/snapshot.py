"""A run's own config (`WORKDIR/config.json`): comd_jax/configs/snapshot.py.

  python launch/serve_teacher.py --config=configs/snapshot.py:WORKDIR/config.json ...
"""
from comd_jax.configs.snapshot import get_config  # noqa: F401
