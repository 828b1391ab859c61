"""The named parts the CoMD driver (`comd_jax.distill.driver.run_comd`) is made of.

- `ChatClient`: chat completions from a model endpoint (teacher, judge,
  augmentor). Our teacher server and any OpenAI-compatible endpoint both satisfy
  it through `comd_jax.serve.client`; tests use fakes.
- `Student`: the model being distilled, trained and asked in this process.
- `PoolSource`: the instructions the first pool is made of, and their images.
- `Evaluator`: one benchmark; scores the student after every round and the teacher once.
- Judges and augmentors: `comd_jax.distill.judges`, `comd_jax.distill.augment`.

A data kind (the offline world, the user's LLaVA files) brings its own pool
source, any benchmarks of its own and, where it has ground truth, judge and augmentor; the
driver sees only these protocols.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Protocol, Sequence

from comd_jax.serve.client import Choice  # the client returns what the loop reads


class ChatClient(Protocol):
    async def chat(self, messages: Sequence[dict], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                   max_tokens: int = 256, stop: Optional[Sequence[str]] = None,
                   seed: Optional[int] = None) -> list[Choice]:
        ...


class Student(Protocol):
    def warm_up(self) -> list:
        """Train the config's stages (resumable); their summaries."""
        ...

    def tune(self, round_index: int, train_json: str) -> None:
        """One round's tuning on the pool written as LLaVA JSON (resumable)."""
        ...

    def answer(self, round_index: int, entries: Sequence) -> list:
        """The student after round `round_index`'s tuning answers pool entries (texts)."""
        ...

    cfg: object  # its models.config.VLMConfig

    def answerer(self, round_index: int, progress: Optional[str] = None):
        """An eval.answerer.Answerer over the student after round `round_index`."""
        ...

    def model(self, round_index: int):
        """The student's model after round `round_index`'s tuning (for evaluation)."""
        ...

    def fingerprint(self, round_index: int) -> str:
        """sha256 of its parameters after round `round_index`: equal iff bit-identical."""
        ...


class PoolSource(Protocol):
    image_root: str  # the folder the samples' image paths are relative to

    def entries(self) -> list:
        """The first pool as `pool.PoolEntry`s, each `target` the data's own answer ("" when it has
        none); the driver replaces it with the teacher's unless `distill.oracle_answers`."""
        ...

    def images_of(self, entry) -> list:
        """Encoded image bytes of a pool entry, for the endpoints."""
        ...


class Evaluator(Protocol):
    """One benchmark (`comd_jax.distill.evaluation`)."""
    settings: Mapping  # what its result depends on besides the model

    def teacher(self, answerer) -> dict:
        """The teacher's result, once per run, its answers through `answerer` (its endpoint):
        {"scores": {...}, ...}."""
        ...

    def student(self, round_index: int, student: Student) -> dict:
        """The student's result after round `round_index` (-1: the baseline): {"scores": {...}, ...}."""
        ...


@dataclasses.dataclass(frozen=True)
class Kind:
    """What a data kind brings to the driver (`comd_jax.distill.kinds`)."""
    pool: PoolSource
    benchmarks: Mapping[str, Evaluator] = dataclasses.field(default_factory=dict)  # its own, by name
    teacher_checkpoint: str = ""  # served by our server when distill.teacher_url is empty
    judges: Mapping[str, Callable] = dataclasses.field(default_factory=dict)  # name -> (client) -> judge
    augmentors: Mapping[str, Callable] = dataclasses.field(default_factory=dict)  # name -> (client) -> augmentor
    title: str = "CoMD: scores by round"
    report: Mapping = dataclasses.field(default_factory=dict)  # extra fields for results.json
