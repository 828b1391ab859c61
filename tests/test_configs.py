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
    # Equal teacher calls: a fixed seed budget that no variant overrides.
    from comd_jax.distill.driver import distill_config

    budgets = {distill_config(_apply(config, v.to_dict())).seeds_per_round for v in config.ablation.variants.values()}
    assert budgets == {48}
    # Every variant is scored on every held-out example of the ablation's world, the same ones.
    limits = {(_apply(config, v.to_dict()).distill.eval_limit, _apply(config, v.to_dict()).data.num_heldout)
              for v in config.ablation.variants.values()}
    assert limits == {(2700, 2700)}
    with pytest.raises(KeyError, match="distill.no_such_field"):
        _apply(config, {"distill": {"no_such_field": 1}})


def test_unknown_preset_is_an_error():
    with pytest.raises(ValueError, match="unknown preset"):
        _module().get_config("nope")


def test_ablation_trains_the_teacher_once_and_each_seeds_warm_up_once(tmp_path, monkeypatch):
    """The runs compare only what the rounds do: every run must see the same teacher and
    both variants of a seed the same warm-up student. A fake run "trains" whatever is
    missing from its workdir (a real one resumes from what is there)."""
    from comd_jax.distill import ablation, driver

    config = _module().get_config("ablation")
    trained = []

    def fake_run(cfg, run_dir):
        assert cfg.teacher_seed == 0  # the trainer refuses a checkpoint made with another seed
        for part in ("world",) + tuple(f"checkpoints/{s}" for s in cfg.teacher_stages + cfg.stages):
            path = os.path.join(run_dir, part)
            if not os.path.exists(path):
                os.makedirs(path)
                open(os.path.join(path, "by"), "w").write(f"{cfg.seed} {cfg.distill.seed_policy}")
                trained.append((part, cfg.seed, cfg.distill.seed_policy))
        score = 10.0 * cfg.seed + (cfg.distill.seed_policy == "hard")
        return {"rounds": [{"student": {"mean": score + r}, "teacher": {"mean": 40.0}, "added": 96}
                           for r in range(cfg.distill.rounds)]}

    monkeypatch.setattr(driver, "run_comd", fake_run)
    summary = ablation.run_ablation(config, str(tmp_path))
    teacher_parts = [t for t in trained if t[0] == "world" or "teacher" in t[0]]
    assert {(seed, policy) for _, seed, policy in teacher_parts} == {(0, "hard")}
    warm_up = [(seed, policy) for part, seed, policy in trained if part.endswith("/stage0")]
    assert warm_up == [(0, "hard"), (1, "hard"), (2, "hard")]  # the plain variant reuses its seed's
    assert open(tmp_path / "plain" / "seed2" / "checkpoints" / "tune" / "by").read() == "2 hard"
    assert summary["comd"]["mean_by_round"] == [11.0, 12.0, 13.0, 14.0]
    assert summary["plain"]["runs"][1] == [10.0, 11.0, 12.0, 13.0]
    rows = [line for line in (tmp_path / "ablation.md").read_text().splitlines() if line.startswith("| comd")]
    assert rows == ["| comd | 11.0 ± 8.2 | 12.0 ± 8.2 | 13.0 ± 8.2 | 14.0 ± 8.2 |"]
    report = (tmp_path / "ablation.md").read_text()
    assert "| teacher | 40.0 | 40.0 | 40.0 | 40.0 |" in report
    # CoMD's fake runs score 1 above plain's on every seed: plain is behind on all 3, by exactly 1.
    assert "| plain − comd, paired by seed (ahead/behind) | -1.0 ± 0.0 (0/3) |" in report
    assert summary["plain"]["minus_first"]["behind_by_round"] == [3, 3, 3, 3]
    assert "- plain: new teacher-answered instructions per run over all rounds: 384 " in report
    assert summary["plain"]["added_by_round"] == [[96] * 4] * 3


def test_world_spec_is_read_from_the_data_section_in_one_place():
    from comd_jax import stages
    from comd_jax.eval.loading import world_spec

    config = _module().get_config("default")
    config.data.max_objects = 2
    spec = stages.world_spec(config.data)
    assert (spec.max_objects, spec.num_instructions, spec.image_size) == (2, 4000, 32)
    assert world_spec(config) == spec  # the evaluation and the augmentor see the same world
    del config.data["max_objects"]  # a config.json written before the field existed
    assert stages.world_spec(config.data).max_objects == 5
