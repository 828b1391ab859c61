"""The tower probe: its labels are the rendered object's, and a tower learns colour from them."""
import numpy as np
import pytest

from comd_jax import config as config_lib
from comd_jax.data import images
from comd_jax.data.synthetic import scene
from comd_jax.eval import tower_probe

pytestmark = pytest.mark.e2e  # slow: the quick loop is pytest -m "not e2e"


def test_labels_name_the_object_the_pixels_show():
    scenes = tower_probe.one_object_scenes(np.random.default_rng(3), 40, 32)
    mean, std = np.asarray(images.CLIP_MEAN), np.asarray(images.CLIP_STD)
    background = np.asarray(scene.BACKGROUND) / 255
    for pixels, colour in zip(scenes.pixels, scenes.colour):
        rgb = pixels * std + mean  # undo the pipeline's normalization
        drawn = np.abs(rgb - background).max(-1) > 0.02
        np.testing.assert_allclose(rgb[drawn], np.broadcast_to(np.asarray(scene.PALETTE[tower_probe.COLOURS[colour]])
                                                               / 255, rgb[drawn].shape), atol=1e-5)
    assert len(set(scenes.shape.tolist())) == len(scene.SHAPES)


def test_a_small_tower_learns_colour_well_above_chance():
    cfg = config_lib.model_config(config_lib.preset("ablation").model)  # 64 wide, 4 px patches
    history = tower_probe.probe(cfg, steps=100, batch=32, num_train=1024, num_test=200, evals=2, log=lambda _: None)
    assert [h["step"] for h in history] == [50, 100]
    assert history[-1]["colour_accuracy"] > 0.5  # chance is 1/6


def test_command_line_overrides_the_patch_and_image_size(capsys):
    argv = [f"--config={config_lib.DEFAULT_CONFIG_FILE}:smoke", "--steps=2", "--batch=4",
            "--patch_size=4", "--image_size=16"]
    assert tower_probe.main(argv) == 0
    out = capsys.readouterr().out
    assert "16 px images in 4 px patches (16 tokens)" in out and "step 2:" in out
