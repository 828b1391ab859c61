"""Every preset of every experiment config builds and validates."""
import importlib.util
import os

import pytest

from comd_jax import config as config_lib
from tests._multidevice import REPO


def _module():
    spec = importlib.util.spec_from_file_location("comd_config", os.path.join(REPO, "configs", "comd.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset", ["default", "smoke", "paper", "ablation"])
def test_preset_validates(preset):
    config = _module().get_config(preset)
    config_lib.model_config(config.model)
    config_lib.model_config(config.teacher)
    config_lib.mesh_config(config.mesh)
    for name in config.stages:
        config_lib.optim_config(config[name])


def test_ablation_variants_apply_and_reject_unknown_keys():
    from comd_jax.distill.ablation import _apply

    config = _module().get_config("ablation")
    plain = _apply(config, config.ablation.variants.plain.to_dict())
    assert plain.distill.seed_policy == "random" and not plain.distill.competitive
    assert config.distill.seed_policy == "hard"  # the original is untouched
    with pytest.raises(KeyError, match="distill.no_such_field"):
        _apply(config, {"distill": {"no_such_field": 1}})


def test_unknown_preset_is_an_error():
    with pytest.raises(ValueError, match="unknown preset"):
        _module().get_config("nope")
