"""The experiment configs, inside the package so that an installed comd_jax has them.

`comd.py` holds the presets (`get_config("smoke")`, ...); `snapshot.py` reloads a run's
`WORKDIR/config.json` for its child processes. The checkout's `configs/*.py` re-export them, so
`--config=configs/comd.py:smoke` works in a clone, and the launchers find the same names here
from any directory (`comd_jax/cli/config_arg.py`).
"""
import os

DIR = os.path.dirname(os.path.abspath(__file__))
COMD = os.path.join(DIR, "comd.py")
SNAPSHOT = os.path.join(DIR, "snapshot.py")
