"""The config is validated once into frozen per-section dataclasses: every preset passes, and a
bad key, type or choice is refused by its dotted name before any compute."""
import dataclasses
import os
import subprocess
import sys

import ml_collections
import pytest

from comd_jax import config as config_lib
from comd_jax.configs.comd import PRESETS as ALL_PRESETS
from comd_jax import experiment
from comd_jax.models.config import VLMConfig
from comd_jax.serve.prompts import Limits
from comd_jax.sharding import MeshConfig
from tests._paths import launch_env

PRESETS = sorted(ALL_PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_becomes_frozen_sections_with_its_values(preset):
    config = config_lib.preset(preset)
    exp = experiment.validate(config)
    assert isinstance(exp.model, VLMConfig) and isinstance(exp.mesh, MeshConfig) and isinstance(exp.serve, Limits)
    assert isinstance(exp.distill, experiment.DistillSection) and isinstance(exp.data, experiment.DataSection)
    for name in tuple(config.stages) + tuple(exp.teacher_stages) + ("round_tune",):
        assert isinstance(exp[name], experiment.StageSection)
        assert exp[name].length_buckets == tuple(config[name].length_buckets)
        assert exp[name].learning_rate == config[name].learning_rate
    assert exp.distill.easy_keep == config.distill.easy_keep
    assert exp.model.text.hidden_size == config.model.text.hidden_size
    assert exp.serve.max_prompt_tokens == config.serve.max_prompt_tokens
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.distill.rounds = 9
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.seed = 3
    assert experiment.validated(exp) is exp  # checked once, however many entry points it passes


def test_the_snapshot_round_trip_gives_the_same_experiment(tmp_path):
    config = config_lib.preset("smoke")
    config.distill.threshold = 2.5
    exp = experiment.validate(config)
    path = tmp_path / "config.json"
    path.write_text(exp.to_json(indent=2))
    from comd_jax.configs import snapshot

    again = experiment.validate(snapshot.get_config(str(path)))
    assert again == exp and again.distill.threshold == 2.5


def _refused(mutate, match):
    config = config_lib.preset("default")
    with config.unlocked():
        mutate(config)
    with pytest.raises(experiment.ConfigError, match=match):
        experiment.validate(config)


def test_unknown_keys_are_refused_by_their_dotted_name_with_the_nearest_one():
    def distill(c):
        c.distill.treshold = 2.0
    _refused(distill, r"config\.distill\.treshold: unknown key; did you mean 'threshold'\?")

    def stage(c):
        c.round_tune.learning_rte = 1e-4
    _refused(stage, r"config\.round_tune\.learning_rte: unknown key; did you mean 'learning_rate'\?")

    def top(c):
        c.distil = ml_collections.ConfigDict(dict(rounds=2))
    _refused(top, r"config\.distil: unknown key; did you mean 'distill'\?")

    def model(c):
        c.model.text.hidden_sise = 64
    _refused(model, r"config\.model\.text: unknown key\(s\) \['hidden_sise'\]")

    def serve(c):
        c.serve.max_tokens = 9
    _refused(serve, r"config\.serve\.max_tokens: unknown key")


def test_wrong_types_choices_and_ranges_are_refused_by_name():
    def kind(c):
        c.data.kind = "json"
    _refused(kind, r"config\.data\.kind='json': choose one of \['world', 'llava_json', 'tfds'\]")

    def judge(c):
        c.distill.judge = "gpt4"
    _refused(judge, r"config\.distill\.judge='gpt4'")

    def buckets(c):
        c.tune.length_buckets = (176, 128)
    _refused(buckets, r"config\.tune\.length_buckets=\(176, 128\)")

    def benchmark(c):
        c.eval.benchmarks = ("sqa",)
    _refused(benchmark, r"config\.eval\.benchmarks\['sqa'\]")

    def easy(c):
        c.distill.easy_keep = 1.5
    _refused(easy, r"config\.distill\.easy_keep=1\.5")

    def typed(c):  # a user's own file may build its sections afresh, with no preset's types
        del c.distill["rounds"]
        c.distill.rounds = "4"
    _refused(typed, r"config\.distill\.rounds='4': expected int, got str")

    def boolean(c):
        del c.tune["global_batch"]
        c.tune.global_batch = True
    _refused(boolean, r"config\.tune\.global_batch=True: expected int, got bool")

    def nothing(c):  # no cross-entropy and no KD term: the rounds would train on nothing
        c.distill.kd, c.distill.kd_alpha, c.distill.kd_ce_weight = "topk", 0.0, 0.0
    _refused(nothing, r"config\.distill\.kd_alpha and config\.distill\.kd_ce_weight are both 0")

    def on_policy_alone(c):  # round 0 has no student answers to score: it would train on nothing
        c.distill.kd, c.distill.kd_ce_weight = "on_policy", 0.0
    _refused(on_policy_alone, r"kd='on_policy' with config\.distill\.kd_ce_weight=0 would train round 0 on nothing")

    def ce_without_kd(c):
        c.distill.kd_ce_weight = 0.0
    _refused(ce_without_kd, r"config\.distill\.kd_ce_weight=0\.0 .* config\.distill\.kd is 'none'")

    def accum(c):
        c.round_tune.grad_accum_steps = 3
    _refused(accum, r"config\.round_tune\.global_batch=16 is not divisible by config\.round_tune\.grad_accum_steps=3")


def test_stage_names_must_name_stage_sections_and_rounds_need_round_tuning():
    def stages(c):
        c.stages = ("stage0", "tuen")
    _refused(stages, r"config\.stages names 'tuen', which is not a stage section")

    def no_round_tune(c):
        del c["round_tune"]
    _refused(no_round_tune, r"config\.distill\.rounds > 0 needs a config\.round_tune")

    def missing(c):
        del c.distill["judge"]
    _refused(missing, r"config\.distill: missing key\(s\) \['judge'\]")


def test_the_data_kinds_are_the_ones_the_code_has():
    from comd_jax import stages
    from comd_jax.distill import kinds

    assert set(experiment.DATA_KINDS) == set(stages.SOURCES) == set(kinds.KINDS)


def test_a_mistyped_key_in_a_users_config_file_stops_the_run_before_any_compute(tmp_path):
    mine = tmp_path / "mine.py"
    mine.write_text("from comd_jax.configs import comd\n\n"
                    "def get_config(arg='smoke'):\n"
                    "    c = comd.get_config(arg)\n"
                    "    c.distill.easy_kep = 0.5\n"
                    "    return c\n")
    workdir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "comd_jax.train", f"--config={mine}", f"--workdir={workdir}"],
                         cwd=str(tmp_path), env=launch_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "config.distill.easy_kep: unknown key; did you mean 'easy_keep'?" in out.stderr
    # Nothing was built: no world, no checkpoints, no snapshot.
    assert not os.path.exists(workdir / "world") and not os.path.exists(workdir / "checkpoints")
    assert not os.path.exists(workdir / "config.json")
