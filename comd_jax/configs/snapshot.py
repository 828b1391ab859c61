"""A config written by a run (`WORKDIR/config.json`), so child processes such as the
teacher server see exactly the run's config, command-line overrides included.

  python -m comd_jax.serve --config=configs/snapshot.py:WORKDIR/config.json ...
"""
import json

import ml_collections


def get_config(path: str) -> ml_collections.ConfigDict:
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
