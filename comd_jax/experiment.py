"""The experiment config, validated once at start-up into frozen per-section dataclasses.

  config = experiment.validate(flags.FLAGS.config)   # ConfigDict -> Experiment

A key no section knows, a missing key, a value of the wrong type or outside its choices is
refused here, by its dotted name (`config.distill.treshold: unknown key; did you mean
'threshold'?`), before any compute. The run then reads `config.section.key` from frozen
dataclasses: nothing can change a setting half-way through, and nothing guesses a default.

The architecture sections become the model's own dataclasses (`VLMConfig`), the mesh its
`MeshConfig`, the server's limits its `Limits`; training stages (`stage0`, `tune`,
`round_tune`, ...: any top-level section with a stage's keys) become `StageSection`s, reached
as `config.tune` or `config["tune"]`. `validated(x)` takes either form, so every library entry
point can call it and a config is checked exactly once however it arrives.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from typing import Mapping, Optional, Tuple

import ml_collections

from comd_jax import config as config_lib
from comd_jax.models.config import VLMConfig
from comd_jax.serve.prompts import Limits
from comd_jax.sharding import MeshConfig


class ConfigError(ValueError):
    """A setting refused at start-up; the message names it."""


DATA_KINDS = ("world", "llava_json", "tfds")
BENCHMARKS = ("scienceqa", "llava_bench", "world")
SCHEDULES = ("cosine", "linear", "constant")


def _one_of(where: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{where}={value!r}: choose one of {list(choices)}")


def _at_least(where: str, value, low) -> None:
    if value < low:
        raise ConfigError(f"{where}={value!r}: must be >= {low}")


@dataclasses.dataclass(frozen=True)
class StageSection:
    """One training stage (configs/comd.py `_stage`): its optimizer, batch, data and cadences."""

    learning_rate: float
    warmup_ratio: float
    total_steps: int
    schedule: str
    end_lr_ratio: float
    weight_decay: float
    grad_clip: float
    trainable: Tuple[str, ...]
    global_batch: int
    grad_accum_steps: int
    template: str
    data: str
    eval_data: str
    image_folder: str
    length_buckets: Tuple[int, ...]
    max_images: int
    strict_data: bool
    log_every: int
    eval_every: int
    eval_batches: int
    save_every: int
    keep_checkpoints: int
    head_capacity_steps: int

    def check(self, where: str) -> None:
        _one_of(f"{where}.schedule", self.schedule, SCHEDULES)
        for name in ("total_steps", "eval_every", "head_capacity_steps", "max_images"):
            _at_least(f"{where}.{name}", getattr(self, name), 0)
        for name in ("global_batch", "grad_accum_steps", "log_every", "eval_batches", "save_every",
                     "keep_checkpoints"):
            _at_least(f"{where}.{name}", getattr(self, name), 1)
        if self.global_batch % self.grad_accum_steps:
            raise ConfigError(f"{where}.global_batch={self.global_batch} is not divisible by "
                              f"{where}.grad_accum_steps={self.grad_accum_steps}")
        if not self.length_buckets or list(self.length_buckets) != sorted(set(self.length_buckets)) \
                or self.length_buckets[0] < 1:
            raise ConfigError(f"{where}.length_buckets={self.length_buckets!r}: one or more positive lengths, "
                              "strictly increasing")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ConfigError(f"{where}.warmup_ratio={self.warmup_ratio!r}: must be within [0, 1]")


@dataclasses.dataclass(frozen=True)
class DataSection:
    """The training data: the offline world, a LLaVA JSON file, or a TFDS dataset."""

    kind: str
    world_seed: int
    image_size: int
    num_captions: int
    num_instructions: int
    num_heldout: int
    vocab_size: int
    max_objects: int
    tokenizer: str
    image_processor: str
    name: str
    data_dir: str

    def check(self, where: str) -> None:
        _one_of(f"{where}.kind", self.kind, DATA_KINDS)
        for name in ("image_size", "num_captions", "num_instructions", "num_heldout", "vocab_size", "max_objects"):
            _at_least(f"{where}.{name}", getattr(self, name), 1)
        if self.kind == "tfds" and not self.name:
            raise ConfigError(f"{where}.kind='tfds' needs {where}.name (the TFDS dataset's name)")


@dataclasses.dataclass(frozen=True)
class DistillSection:
    """The competitive distillation loop: rounds, judge, augmentor, selection, endpoints."""

    rounds: int
    pool_size: int
    judge: str
    augmentor: str
    threshold: float
    easy_keep: float
    student_margin: float
    competitive: bool
    seed_policy: str
    seeds_per_round: int
    oracle_answers: bool
    teacher_floor: float
    per_seed: int
    max_new_per_round: int
    answer_max_tokens: int
    concurrency: int
    gen_batch: int
    assess_chunk: int
    teacher_url: str
    teacher_checkpoint: str
    judge_url: str
    judge_model: str
    judge_api_key_env: str
    judge_max_tokens: int
    pool_data: str
    image_folder: str
    teacher_model: str
    teacher_api_key_env: str
    eval_limit: int
    kd: str
    kd_alpha: float
    kd_temperature: float
    kd_top_k: int
    kd_ce_weight: float = 1.0  # a snapshot from before the key resumes as it ran

    def check(self, where: str) -> None:
        from comd_jax.train.kd import MAX_TOP_K, MODES

        _one_of(f"{where}.kd", self.kd, MODES)
        if not 1 <= self.kd_top_k <= MAX_TOP_K:
            raise ConfigError(f"{where}.kd_top_k={self.kd_top_k!r}: within [1, {MAX_TOP_K}] (what OpenAI-compatible "
                              "endpoints send at most)")
        if self.kd_temperature <= 0 or self.kd_alpha < 0 or self.kd_ce_weight < 0:
            raise ConfigError(f"{where}.kd_temperature must be > 0, {where}.kd_alpha and {where}.kd_ce_weight "
                              f">= 0, got {self.kd_temperature!r}, {self.kd_alpha!r} and {self.kd_ce_weight!r}")
        if self.kd != "none" and self.kd_alpha == 0 and self.kd_ce_weight == 0:
            raise ConfigError(f"{where}.kd_alpha and {where}.kd_ce_weight are both 0: the rounds would train on "
                              "nothing")
        if self.kd == "on_policy" and self.kd_ce_weight == 0:
            raise ConfigError(f"{where}.kd='on_policy' with {where}.kd_ce_weight=0 would train round 0 on nothing: "
                              "on_policy's pool rows train by the cross-entropy alone, and its scored rows (the "
                              "student's own answers) come from the assessments; keep kd_ce_weight > 0")
        if self.kd == "none" and self.kd_ce_weight != 1.0:
            raise ConfigError(f"{where}.kd_ce_weight={self.kd_ce_weight!r} weighs the cross-entropy against the KD "
                              f"term, and {where}.kd is 'none': set kd to topk or on_policy, or leave it at 1.0")
        _one_of(f"{where}.judge", self.judge, ("reference", "llm"))
        _one_of(f"{where}.augmentor", self.augmentor, ("procedural", "llm"))
        _one_of(f"{where}.seed_policy", self.seed_policy, ("hard", "random"))
        for name in ("rounds", "seeds_per_round", "max_new_per_round", "eval_limit"):
            _at_least(f"{where}.{name}", getattr(self, name), 0)
        for name in ("pool_size", "per_seed", "answer_max_tokens", "concurrency", "gen_batch", "assess_chunk",
                     "judge_max_tokens"):
            _at_least(f"{where}.{name}", getattr(self, name), 1)
        if not 0.0 <= self.easy_keep <= 1.0:
            raise ConfigError(f"{where}.easy_keep={self.easy_keep!r}: a fraction within [0, 1]")


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """The benchmarks a CoMD run scores, and their files."""

    benchmarks: Tuple[str, ...]
    scienceqa_questions: str
    scienceqa_problems: str
    scienceqa_images: str
    llava_bench_questions: str
    llava_bench_answers: str
    llava_bench_context: str
    llava_bench_images: str
    limit: int
    max_new_tokens: int
    reliance_examples: int

    def check(self, where: str) -> None:
        for name in self.benchmarks:
            _one_of(f"{where}.benchmarks[{name!r}]", name, BENCHMARKS)
        for name in ("limit", "max_new_tokens", "reliance_examples"):
            _at_least(f"{where}.{name}", getattr(self, name), 0)


@dataclasses.dataclass(frozen=True)
class AblationSection:
    """`python -m comd_jax.distill.ablation`: the seeds, and each variant's config overrides."""

    seeds: Tuple[int, ...]
    variants: dict

    def check(self, where: str) -> None:
        if not self.seeds:
            raise ConfigError(f"{where}.seeds: at least one seed")
        for name, overrides in self.variants.items():
            if not isinstance(overrides, Mapping):
                raise ConfigError(f"{where}.variants.{name}: a mapping of config overrides, got {overrides!r}")


# Top-level sections, by key; stage sections are the other top-level sections (by their keys).
_SECTIONS = {"data": DataSection, "distill": DistillSection, "eval": EvalSection, "ablation": AblationSection}
_STAGE_MARKERS = ("learning_rate", "total_steps", "global_batch")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A whole experiment config, checked. Stage sections: `config.tune` / `config["tune"]`."""

    seed: int
    preset: str
    model: VLMConfig
    teacher: Optional[VLMConfig]
    mesh: MeshConfig
    data: DataSection
    init_from: str
    init_vision_from: str
    init_required: bool
    compilation_cache_dir: str
    world_teacher_out: str
    stages: Tuple[str, ...]
    teacher_seed: int
    distill: DistillSection
    eval: EvalSection
    serve: Limits
    teacher_stages: Tuple[str, ...] = ()
    ablation: Optional[AblationSection] = None
    sections: Mapping[str, StageSection] = dataclasses.field(default_factory=dict, repr=False)
    # The ConfigDict it was validated from, for the run's config.json snapshot and the ablation.
    source: ml_collections.ConfigDict = dataclasses.field(default=None, repr=False, compare=False)

    def __getattr__(self, name):  # only for names that are not fields: the stage sections
        sections = self.__dict__.get("sections") or {}
        if name in sections:
            return sections[name]
        raise AttributeError(f"the config has no key {name!r}")

    def __getitem__(self, name):
        return getattr(self, name)

    def __contains__(self, name) -> bool:
        return name in self.sections or (name in _TOP_FIELDS and getattr(self, name) is not None)

    def to_json(self, **kwargs) -> str:
        return self.source.to_json(**kwargs)


_TOP_FIELDS = {f.name for f in dataclasses.fields(Experiment)} - {"sections", "source"}


def _dict(value) -> dict:
    return config_lib.as_dict(value)


def _unknown(where: str, key: str, known) -> ConfigError:
    near = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"{where}.{key}: unknown key{hint} ({where} has {sorted(known)})")


def _typed(where: str, value, hint):
    """`value` as the field's type: ints for floats are widened, lists become tuples, and
    anything else that does not fit is refused by name."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    if origin is tuple and isinstance(value, (tuple, list)):
        item = typing.get_args(hint)[0]
        return tuple(_typed(f"{where}[{i}]", v, item) for i, v in enumerate(value))
    if hint is dict and isinstance(value, (Mapping, ml_collections.ConfigDict)):
        return _dict(value)
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}={value!r}: expected {name}, got {type(value).__name__}")


def section(cls, values, where: str):
    """`values` (a ConfigDict or mapping) as the frozen dataclass `cls`, every key checked."""
    values = _dict(values)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in values:
        if key not in fields:
            raise _unknown(where, key, fields)
    missing = [n for n, f in fields.items() if n not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing} (the presets of configs/comd.py set every key)")
    out = cls(**{k: _typed(f"{where}.{k}", v, hints[k]) for k, v in values.items()})
    if hasattr(out, "check"):
        out.check(where)
    return out


def _is_stage(value) -> bool:
    return isinstance(value, ml_collections.ConfigDict) and all(k in value for k in _STAGE_MARKERS)


def validate(config: ml_collections.ConfigDict) -> Experiment:
    """The whole config checked into an `Experiment`; a `ConfigError` names the first bad key."""
    if isinstance(config, Experiment):
        return config
    known = _TOP_FIELDS
    top, stages = {}, {}
    for key in config.keys():
        value = config[key]
        if key in known:
            top[key] = value
        elif _is_stage(value):
            stages[key] = section(StageSection, value, f"config.{key}")
        else:
            raise _unknown("config", key, sorted(known) + ["<stage sections>"])
    fields = {}
    for key, value in top.items():
        where = f"config.{key}"
        if key in ("model", "teacher"):
            fields[key] = None if value is None else _wrapped(where, config_lib.model_config, value, where)
        elif key == "mesh":
            fields[key] = _wrapped(where, lambda v: section(MeshConfig, v, where), value)
        elif key == "serve":
            fields[key] = _wrapped(where, lambda v: section(Limits, v, where), value)
        elif key in _SECTIONS:
            fields[key] = None if value is None else section(_SECTIONS[key], value, where)
        else:
            fields[key] = value
    hints = typing.get_type_hints(Experiment)
    for key in list(fields):
        if key not in ("model", "teacher", "mesh", "serve") and key not in _SECTIONS:
            fields[key] = _typed(f"config.{key}", fields[key], hints[key])
    missing = sorted(k for k, f in ((f.name, f) for f in dataclasses.fields(Experiment))
                     if k not in fields and k not in ("sections", "source") and f.default is dataclasses.MISSING)
    if missing:
        raise ConfigError(f"config: missing key(s) {missing} (the presets of configs/comd.py set every key)")
    for key in ("stages", "teacher_stages"):
        for name in fields.get(key, ()):
            if name not in stages:
                raise ConfigError(f"config.{key} names {name!r}, which is not a stage section of the config "
                                  f"(stage sections: {sorted(stages)})")
    if fields["distill"].rounds > 0 and "round_tune" not in stages:
        raise ConfigError("config.distill.rounds > 0 needs a config.round_tune stage section (each round's tuning)")
    return Experiment(**fields, sections=stages, source=copy.deepcopy(config))


def _wrapped(where, build, value, *args):
    try:
        return build(value, *args)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e) if str(e).startswith(where) else f"{where}: {e}") from e


def validated(config):
    """`config` as an `Experiment` (checked now if it is still a ConfigDict)."""
    return config if isinstance(config, Experiment) else validate(config)
