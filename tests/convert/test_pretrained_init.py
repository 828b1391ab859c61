"""The student's starting weights (config.init_from) and remote workdirs (gs://)."""

import jax
import numpy as np
import pytest
from flax import nnx
from flax.traverse_util import flatten_dict

from comd_jax import config as config_lib
from comd_jax import pretrained, sharding as shd, stages



def _mesh():
    return shd.make_mesh((1, 1, 1), jax.devices()[:1])


def test_paper_preset_without_a_student_names_the_field():
    config = config_lib.preset("paper")
    with pytest.raises(ValueError, match=r"config\.init_from"):
        pretrained.student_params(config, config_lib.model_config(config.model), _mesh(), "fsdp")
    config.unlock()
    config.init_from = "/nonexistent/vicuna"
    with pytest.raises(FileNotFoundError, match=r"config\.init_from='/nonexistent/vicuna'"):
        pretrained.student_params(config, config_lib.model_config(config.model), _mesh(), "fsdp")


def test_offline_presets_start_from_random_weights():
    config = config_lib.preset("smoke")
    assert pretrained.student_params(config, config_lib.model_config(config.model), _mesh(), "fsdp") is None


def test_init_from_a_saved_student_loads_it_and_checks_the_architecture(tmp_path):
    from comd_jax.convert.hf import save_pretrained
    from comd_jax.models import build

    config = config_lib.preset("smoke")
    cfg = config_lib.model_config(config.model)
    model = build.build_model(cfg, seed=3)
    save_pretrained(model, str(tmp_path))
    config.init_from = str(tmp_path)
    params = pretrained.student_params(config, cfg, _mesh(), "fsdp")
    want = flatten_dict(nnx.state(model).to_pure_dict())
    got = flatten_dict(params)
    assert set(got) == set(want)
    for path in want:
        np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(want[path]), err_msg=str(path))
    config.model.text.rms_norm_eps = 1e-3  # loads fine shape-wise, but is another model
    with pytest.raises(ValueError, match=r"model\.text\.rms_norm_eps"):
        pretrained.student_params(config, config_lib.model_config(config.model), _mesh(), "fsdp")


def test_remote_workdirs_stay_remote():
    from comd_jax.train.checkpoint import StageCheckpoints

    assert stages.world_dir("runs/a") == "runs/a/world"
    local = stages.world_dir("gs://bucket/runs/a")
    assert "://" not in local and local.endswith("bucket/runs/a/world")
    # No manager is built (no GCS here): only the path handling is under test.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("orbax.checkpoint.CheckpointManager", lambda directory, options: directory)
        ckpt = StageCheckpoints("gs://bucket/runs/a/checkpoints/tune", save_every=1)
    assert ckpt.directory == ckpt.manager == "gs://bucket/runs/a/checkpoints/tune"


def test_paper_preset_takes_the_checkpoints_architecture_and_refuses_a_clashing_override(tmp_path):
    """A user's tiny (or 7B) LLaVA directory under the paper preset's Vicuna-7B sizes: the sizes
    become the checkpoint's and the weights load; a size the user typed that disagrees is named."""
    from comd_jax.convert.hf import save_pretrained
    from comd_jax.models import build

    smoke = config_lib.preset("smoke")
    cfg = config_lib.model_config(smoke.model)
    save_pretrained(build.build_model(cfg, seed=4), str(tmp_path))
    config = config_lib.preset("paper")
    config.init_from = str(tmp_path)
    changed = pretrained.adopt_architecture(config, {"eval.limit": 3})
    assert any(c.startswith("model.text.hidden_size: 4096 (config) vs 64") for c in changed), changed
    assert any(c.startswith("model.image_token_id: 32000 (config) vs 4") for c in changed), changed
    adopted = config_lib.model_config(config.model)
    assert (adopted.text, adopted.vision, adopted.image_token_id) == (cfg.text, cfg.vision, cfg.image_token_id)
    assert (adopted.dtype, adopted.remat) == ("bfloat16", True)  # how to compute stays the preset's
    params = pretrained.student_params(config, adopted, _mesh(), "fsdp")
    assert params["text"]["embed"].shape == (cfg.text.vocab_size, cfg.text.hidden_size)
    assert pretrained.adopt_architecture(config, {"model.text.hidden_size": cfg.text.hidden_size}) == []

    config = config_lib.preset("paper")
    config.init_from = str(tmp_path)
    with pytest.raises(ValueError, match=r"model\.text\.hidden_size: 4096 \(command line\) vs "
                                         rf"{cfg.text.hidden_size} \(.*config\.json\)"):
        pretrained.adopt_architecture(config, {"model.text.hidden_size": 4096})
    assert config.model.text.hidden_size == 4096  # refused: nothing was changed
