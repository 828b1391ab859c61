"""A config written by a run (`WORKDIR/config.json`), so child processes such as the
teacher server see exactly the run's config, command-line overrides included.

  python -m comd_jax.serve --config=configs/snapshot.py:WORKDIR/config.json ...

The saved values are laid over the preset the snapshot names (its `preset` field), so a
snapshot written before a key existed still has every key, with the preset's default; a saved
key the preset does not know is an error naming the file and the key (in the architecture
sections, a field the model dataclasses do not know, when the config is built).
"""
import json

import ml_collections


# Sections whose fields a run may add: the student's and teacher's architecture (taken from
# their checkpoints' config.json).
ARCHITECTURES = ("model", "teacher")
# Tables whose entries are the user's own names: an ablation's variants (a config file may add
# its own to a preset's), taken as saved.
TABLES = ("ablation.variants",)


def _as_config(value, default):
    """A JSON value in the shape the preset's field has (JSON has lists, our configs tuples)."""
    if isinstance(value, list) and (default is None or isinstance(default, tuple)):
        return tuple(_as_config(v, None) for v in value)
    return value


def _overlay(config: ml_collections.ConfigDict, saved: dict, where: str, preset: str, prefix: str = "") -> None:
    for key, value in saved.items():
        name = prefix + key
        if key not in config and (name.split(".")[0] in ARCHITECTURES or prefix.rstrip(".") in TABLES):
            # config.init_from's config.json adds the fields it sets (model_config() refuses any
            # the model dataclasses do not have, by name); a variant's name is the user's own.
            config[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else _as_config(value, None)
            continue
        if key not in config:
            raise ValueError(f"{where}: unknown key {name!r}; the {preset!r} preset has no such setting (a "
                             "snapshot from another version of comd_jax?)")
        default = config[key]
        if isinstance(default, ml_collections.ConfigDict) and isinstance(value, dict):
            _overlay(default, value, where, preset, name + ".")
        elif isinstance(value, dict):
            config[key] = ml_collections.ConfigDict(value)  # a section the preset leaves None
        else:
            try:
                config[key] = _as_config(value, default)
            except TypeError as e:
                raise ValueError(f"{where}: {name}={value!r} does not fit the preset's {default!r}: {e}") from e


def get_config(path: str) -> ml_collections.ConfigDict:
    with open(path) as f:
        saved = json.load(f)
    name = saved.get("preset")
    if not name:  # not written by a run of ours: read as it is
        return ml_collections.ConfigDict(saved)
    from comd_jax.configs import comd

    config = comd.get_config(name)
    _overlay(config, saved, path, name)
    return config
