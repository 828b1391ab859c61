"""Every preset of every experiment config builds and validates."""
import os

import ml_collections
import pytest

from comd_jax import config as config_lib
from comd_jax.configs.comd import PRESETS
from tests._paths import REPO


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_validates(preset):
    config = config_lib.preset(preset)
    config_lib.model_config(config.model)
    config_lib.model_config(config.teacher)
    config_lib.mesh_config(config.mesh)
    for name in config.stages:
        config_lib.optim_config(config[name])


def test_ablation_variants_apply_and_reject_unknown_keys():
    from comd_jax.distill.ablation import _apply

    config = config_lib.preset("ablation")
    plain = _apply(config, config.ablation.variants.plain.to_dict())
    assert plain.distill.seed_policy == "random" and not plain.distill.competitive
    assert config.distill.seed_policy == "hard"  # the original is untouched
    # Equal teacher calls: a fixed seed budget that no variant overrides.
    from comd_jax.distill.driver import distill_config

    budgets = {distill_config(_apply(config, v.to_dict())).seeds_per_round for v in config.ablation.variants.values()}
    assert budgets == {48}
    # Every variant is scored on the same held-out examples of the teacher's world.
    limits = {(_apply(config, v.to_dict()).distill.eval_limit, _apply(config, v.to_dict()).data.num_heldout)
              for v in config.ablation.variants.values()}
    assert limits == {(1350, 2700)}
    with pytest.raises(KeyError, match="distill.no_such_field"):
        _apply(config, {"distill": {"no_such_field": 1}})


def test_unknown_preset_is_an_error():
    with pytest.raises(ValueError, match="unknown preset"):
        config_lib.preset("nope")


@pytest.mark.parametrize("given_teacher", [True, False])
def test_ablation_makes_the_teacher_once_and_each_seeds_warm_up_once(tmp_path, monkeypatch, given_teacher):
    """The runs compare only what the rounds do: every run must see the same teacher and its
    scores, and both variants of a seed the same warm-up student and its scores. A fake run
    "makes" whatever is missing from its workdir (a real one resumes from what is there)."""
    from comd_jax.distill import ablation, driver

    config = config_lib.preset("ablation")
    assert config.distill.teacher_checkpoint  # the preset: the shipped teacher, a given model
    with config.unlocked():
        config.ablation.seeds = (0, 1, 2)
        if not given_teacher:
            config.distill.teacher_checkpoint = ""
    made = []

    def fake_run(cfg, run_dir):
        assert cfg.teacher_seed == 0  # the trainer refuses a checkpoint made with another seed
        teacher = () if cfg.distill.teacher_checkpoint else tuple(f"checkpoints/{s}" for s in cfg.teacher_stages)
        for part in ("world",) + teacher + tuple(f"checkpoints/{s}" for s in cfg.stages) + (
                "eval/baseline", "eval/round0", "eval/teacher"):
            path = os.path.join(run_dir, part)
            if not os.path.exists(path):
                os.makedirs(path)
                open(os.path.join(path, "by"), "w").write(f"{cfg.seed} {cfg.distill.seed_policy}")
                made.append((part, cfg.seed, cfg.distill.seed_policy))
        score = 10.0 * cfg.seed + (1 + cfg.seed) * (cfg.distill.seed_policy == "hard")  # CoMD ahead by 1, 2, 3
        return {"teacher": {"world": {"mean": 40.0}},
                "rounds": [{"student": {"world": {"mean": score + r}}, "added": 96} for r in range(cfg.distill.rounds)]}

    monkeypatch.setattr(driver, "run_comd", fake_run)
    summary = ablation.run_ablation(config, str(tmp_path))
    once = [t for t in made if t[0] in ("world", "eval/teacher") or "teacher_" in t[0]]
    assert {(seed, policy) for _, seed, policy in once} == {(0, "hard")}
    assert len(once) == (2 if given_teacher else 2 + len(config.teacher_stages))
    for part in ("checkpoints/stage0", "eval/baseline"):  # the plain variant reuses its seed's
        assert [(seed, policy) for p, seed, policy in made if p == part] == [(0, "hard"), (1, "hard"), (2, "hard")]
    assert [seed for p, seed, _ in made if p == "eval/round0"] == [0, 0, 1, 1, 2, 2]  # the rounds' own
    assert open(tmp_path / "plain" / "seed2" / "checkpoints" / "tune" / "by").read() == "2 hard"
    assert open(tmp_path / "plain" / "seed2" / "eval" / "teacher" / "by").read() == "0 hard"
    assert summary["comd"]["mean_by_round"] == [12.0, 13.0, 14.0, 15.0]
    assert summary["plain"]["runs"][1] == [10.0, 11.0, 12.0, 13.0]
    rows = [line for line in (tmp_path / "ablation.md").read_text().splitlines() if line.startswith("| comd")]
    assert rows == ["| comd | 12.0 ± 9.0 | 13.0 ± 9.0 | 14.0 ± 9.0 | 15.0 ± 9.0 |"]
    report = (tmp_path / "ablation.md").read_text()
    assert "| teacher | 40.0 | 40.0 | 40.0 | 40.0 |" in report
    # Plain is behind on all 3 seeds, by 1, 2 and 3: mean -2, population std 0.8, and a
    # standard error of 1 / sqrt(3) (sample std 1).
    assert "| plain − comd, paired by seed (standard error; ahead/behind) | -2.0 ± 0.8 (se 0.6; 0/3) |" in report
    assert summary["plain"]["minus_first"]["stderr_by_round"] == pytest.approx([3 ** -0.5] * 4)
    assert summary["plain"]["minus_first"]["behind_by_round"] == [3, 3, 3, 3]
    assert "- plain: new teacher-answered instructions per run over all rounds: 384 " in report
    assert summary["plain"]["added_by_round"] == [[96] * 4] * 3


def test_ablation_with_one_seed_reports_no_standard_error(tmp_path, monkeypatch):
    from comd_jax.distill import ablation, driver

    config = config_lib.preset("ablation")
    with config.unlocked():
        config.ablation.seeds = (3,)
    monkeypatch.setattr(driver, "run_comd", lambda cfg, run_dir: {"rounds": [
        {"student": {"world": {"mean": 30.0 + r + (cfg.distill.seed_policy == "hard")}}, "added": 96}
        for r in range(4)]})
    summary = ablation.run_ablation(config, str(tmp_path))
    assert summary["plain"]["minus_first"]["stderr_by_round"] == [None] * 4
    assert "| -1.0 ± 0.0 (se –; 0/1) |" in (tmp_path / "ablation.md").read_text()


def test_the_kd_ablation_reports_each_skill_paired_with_comd(tmp_path, monkeypatch):
    from comd_jax.distill import ablation, driver

    config = config_lib.preset("kd_ablation")
    with config.unlocked():
        config.ablation.seeds = (0, 1)
    # ConfigDict keeps its keys sorted: comd comes first, and every other variant is paired with it
    assert list(config.ablation.variants) == ["comd", "on_policy", "plain", "topk"]

    def fake_run(cfg, run_dir):  # topk ahead on colour by 2 + seed, behind on shape by 1
        topk = cfg.distill.kd == "topk"
        world = {"colour": 50.0 + topk * (2 + cfg.seed), "shape": 40.0 - topk, "mean": 45.0}
        return {"rounds": [{"student": {"world": world}, "added": 96} for _ in range(4)]}

    monkeypatch.setattr(driver, "run_comd", fake_run)
    summary = ablation.run_ablation(config, str(tmp_path))
    report = (tmp_path / "ablation.md").read_text()
    assert "| skill | comd | on_policy − comd | plain − comd | topk − comd |" in report
    assert "| colour | 50.0 | +0.0 (0.0) | +0.0 (0.0) | +2.5 (0.5) |" in report
    assert "| shape | 40.0 | +0.0 (0.0) | +0.0 (0.0) | -1.0 (0.0) |" in report
    assert summary["topk"]["last_round_by_skill"] == [{"colour": 52.0, "shape": 39.0},
                                                      {"colour": 53.0, "shape": 39.0}]


def test_world_spec_is_read_from_the_data_section_in_one_place():
    from comd_jax import stages
    from comd_jax.eval.loading import world_spec

    config = config_lib.preset("default")
    config.data.max_objects = 2
    spec = stages.world_spec(config.data)
    assert (spec.max_objects, spec.num_instructions, spec.image_size) == (2, 4000, 32)
    assert world_spec(config) == spec  # the evaluation and the augmentor see the same world


def test_a_snapshot_is_laid_over_the_preset_it_names(tmp_path):
    """WORKDIR/config.json, as the teacher server's child reads it back: the saved values over
    the preset's, so a snapshot written before a key existed has the preset's default, and a
    key the preset does not know is refused by name."""
    import json

    from comd_jax import stages
    from comd_jax.configs import snapshot

    config = config_lib.preset("smoke")
    config.distill.rounds, config.data.max_objects, config.stages = 3, 2, ("tune",)
    config.model.text.head_dim = 16  # a field config.init_from's config.json adds to the architecture
    saved = json.loads(config.to_json())
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    assert snapshot.get_config(str(path)).to_dict() == config.to_dict()  # tuples stay tuples
    del saved["data"]["max_objects"], saved["serve"]  # written before the field and the section existed
    path.write_text(json.dumps(saved))
    loaded = snapshot.get_config(str(path))
    assert stages.world_spec(loaded.data).max_objects == 5 and loaded.distill.rounds == 3
    assert loaded.serve.to_dict() == config_lib.preset("smoke").serve.to_dict()
    saved["distill"]["roundz"] = 4
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"config.json: unknown key 'distill.roundz'.*'smoke' preset"):
        snapshot.get_config(str(path))


def test_a_snapshot_keeps_the_ablation_variants_a_config_file_added(tmp_path):
    """A user's config file may add its own variants to a preset's ablation (the teacher
    server's child reads the run's snapshot back): the table's names are the user's, its
    entries kept as saved; a misspelt key elsewhere is still refused."""
    import json

    from comd_jax.configs import snapshot

    config = config_lib.preset("kd_ablation")
    config.ablation.variants.topk_a3 = ml_collections.ConfigDict(dict(distill=dict(kd="topk", kd_alpha=3.0)))
    path = tmp_path / "config.json"
    path.write_text(config.to_json())
    loaded = snapshot.get_config(str(path))
    assert loaded.ablation.variants.topk_a3.distill.kd_alpha == 3.0
    assert loaded.to_dict() == config.to_dict()
    saved = json.loads(config.to_json())
    saved["ablation"]["seedz"] = (0,)
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"unknown key 'ablation.seedz'"):
        snapshot.get_config(str(path))


def test_config_files_load_by_path_and_preset_as_the_flag_reads_them(tmp_path):
    path = os.path.join(REPO, "configs", "comd.py")  # the checkout's name for the packaged presets
    by_path = config_lib.load_config_file(f"{path}:smoke")
    assert by_path.preset == "smoke" and by_path.to_dict() == config_lib.preset("smoke").to_dict()
    assert config_lib.load_config_file(path).preset == "default"
    missing = str(tmp_path / "nope.py")
    with pytest.raises(FileNotFoundError, match="nope.py"):
        config_lib.load_config_file(f"{missing}:smoke")


def test_server_limits_come_from_the_config_and_fit_a_llava_prompt():
    from comd_jax.serve.loading import limits_of

    paper = config_lib.preset("paper")
    limits = limits_of(paper)
    # 576 image tokens plus the instruction, and the answers and verdicts the paper preset asks for.
    assert limits.max_prompt_tokens >= 576 + 512
    assert limits.max_output_tokens >= max(paper.distill.answer_max_tokens, paper.distill.judge_max_tokens)
    smoke = config_lib.preset("smoke")
    assert limits_of(smoke).max_output_tokens >= smoke.distill.judge_max_tokens
    with paper.unlocked():
        paper.serve.max_tokens = 9
    with pytest.raises(ValueError, match=r"config.serve.max_tokens: unknown key"):
        limits_of(paper)


def test_kd_recipe_is_the_kd_ablation_on_the_default_round_recipe():
    recipe, default, kd = (config_lib.preset(n) for n in ("kd_recipe", "default", "kd_ablation"))
    assert recipe.round_tune.total_steps == default.round_tune.total_steps != kd.round_tune.total_steps
    assert recipe.distill.easy_keep == default.distill.easy_keep != kd.distill.easy_keep
    assert recipe.ablation.seeds == kd.ablation.seeds and recipe.distill.eval_limit == kd.distill.eval_limit
    assert sorted(recipe.ablation.variants) == ["comd", "topk"]
