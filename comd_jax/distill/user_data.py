"""The user's own data as CoMD plug-ins: `config.data.kind` "llava_json" or "tfds".

- The pool is `distill.pool_data` (LLaVA JSON or JSONL), images under
  `distill.image_folder`. It is linted before any compute by the same processor
  training uses: bad samples are reported by reason, skipped and counted
  (WORKDIR/distill/pool_lint.json, and the report). Ids become strings;
  duplicate ids are an error naming them. The good samples are shuffled by the
  seed, then the first `distill.pool_size` taken.
- A multi-turn sample becomes one entry: its last user turn is the instruction,
  the turns before it the context every endpoint sees, its last answer (if any)
  the reference. A sample without images is a text-only entry.
- The image folder is recorded at the first start (WORKDIR/distill/pool_source.json);
  a resume that finds it gone says so by name.
- `judge=reference` scores against the pool's own answers: letters for multiple
  choice, exact match for short answers, token F1 otherwise. Data without
  answers refuses it at start-up.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from typing import Optional

import numpy as np

from comd_jax import atomic, multihost
from comd_jax.job import Job
from comd_jax.distill.pool import PoolEntry
from comd_jax.distill.protocol import Kind

_LETTER_ANSWER = re.compile(r"^\(?[A-Z]\)?[.)]?$")


def metric_for(reference: str) -> str:
    """How a reference answer is matched: a bare option letter, a short phrase, or prose."""
    text = reference.strip()
    if _LETTER_ANSWER.match(text):
        return "letter"
    return "exact" if len(text.split()) <= 3 else "f1"


@dataclasses.dataclass
class LlavaPool:
    path: str
    image_root: str
    size: int
    seed: int
    lint: dict = dataclasses.field(default_factory=dict)
    _entries: Optional[list] = None

    @classmethod
    def open(cls, job: Job, student_cfg) -> "LlavaPool":
        """Checks the files, lints every sample and records the image folder: all before any compute."""
        d = job.config.distill
        path, folder = d.pool_data, d.image_folder
        if not path:
            raise ValueError("config.distill.pool_data: set the instructions the CoMD pool starts from "
                             "(LLaVA JSON or JSONL)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config.distill.pool_data={path!r}: no such file")
        folder = folder or os.path.dirname(os.path.abspath(path))
        _check_image_folder(job.workdir, folder)
        pool = cls(path, folder, d.pool_size, job.config.seed)
        pool._entries = pool._read(job, student_cfg)
        return pool

    def _read(self, job: Job, student_cfg) -> list:
        from comd_jax.data.check import check_source
        from comd_jax.data.llava_json import LlavaJsonSource
        from comd_jax.data.processing import ExampleProcessor
        from comd_jax.data.records import RawExample

        source = LlavaJsonSource(self.path, self.image_folder)
        tune = job.config.round_tune
        processor = ExampleProcessor(template=tune.template, tokenizer=job.tokenizer,
                                     image_config=job.data.image_processor,
                                     num_image_tokens=student_cfg.num_image_tokens,
                                     max_length=max(tune.length_buckets), max_images=tune.max_images)
        raws = [source[i] for i in range(len(source))]

        class Answered:  # an instruction without an answer is a fine pool sample: lint it as if answered
            def __len__(self):
                return len(raws)

            def __getitem__(self, i):
                raw = raws[i]
                turns = raw.conversations
                if isinstance(turns, list) and turns and isinstance(turns[-1], dict) and \
                        turns[-1].get("from") in ("human", "user"):
                    raw = RawExample(raw.id, raw.origin, [*turns, {"from": "gpt", "value": "(answer)"}],
                                     raw.images, raw.error)
                return raw

        reports = check_source(Answered(), processor)
        skipped: dict = {}
        for r in reports:
            if r.status != "ok":
                skipped.setdefault(r.status, []).append(f"{r.id} ({r.origin}{': ' + r.detail if r.detail else ''})")
        counts = collections.Counter(r.id for r in reports)
        duplicates = sorted(i for i, n in counts.items() if n > 1)
        if duplicates:
            raise ValueError(f"{self.path}: duplicate ids {duplicates[:20]}: every pool sample needs its own id")
        good = [i for i, r in enumerate(reports) if r.status == "ok"]
        self.lint = {"file": self.path, "samples": len(reports), "ok": len(good),
                     "skipped": {reason: len(v) for reason, v in sorted(skipped.items())},
                     "examples": {reason: v[:5] for reason, v in sorted(skipped.items())}}
        for reason, where in sorted(skipped.items()):
            print(f"{self.path}: skipping {len(where)} sample(s), {reason}: {', '.join(where[:5])}"
                  f"{' ...' if len(where) > 5 else ''}", flush=True)
        if not good:
            raise ValueError(f"{self.path}: no usable sample ({self.lint['skipped']}); nothing to distil on")
        order = np.random.default_rng([self.seed, 0x9001]).permutation(len(good))
        chosen = [good[i] for i in order[: self.size]]
        return [self._entry(raws[i], self._items(source, i)) for i in chosen]

    @property
    def image_folder(self) -> str:
        return self.image_root

    @staticmethod
    def _items(source, index: int) -> dict:
        if source._items is not None:
            return source._items[index]
        return json.loads(source._lines[index][1])

    def _entry(self, raw, item: dict) -> PoolEntry:
        turns = list(item["conversations"])
        last_user = max(i for i, t in enumerate(turns) if t.get("from") in ("human", "user"))
        answer = turns[last_user + 1]["value"].strip() if last_user + 1 < len(turns) else ""
        image = item.get("image")
        image = image[0] if isinstance(image, list) and image else image or None
        return PoolEntry(id=raw.id, instruction=turns[last_user]["value"], target=answer,
                         image=image, reference=answer or None, context=turns[:last_user])

    def entries(self) -> list:
        return [dataclasses.replace(e, provenance=dict(e.provenance), context=list(e.context))
                for e in self._entries]

    def images_of(self, entry) -> list:
        if entry.image is None:
            return []
        with open(os.path.join(self.image_root, entry.image), "rb") as f:
            return [f.read()]


def _check_image_folder(workdir: str, folder: str) -> None:
    record = os.path.join(workdir, "distill", "pool_source.json")
    recorded = None
    if os.path.exists(record):
        with open(record) as f:
            recorded = json.load(f).get("image_folder")
    if not os.path.isdir(folder):
        moved = f" (this run started with {recorded!r}; if the images moved, point " \
                "--config.distill.image_folder at their new place)" if recorded else ""
        raise FileNotFoundError(f"config.distill.image_folder={folder!r}: no such folder{moved}")
    if multihost.is_writer():
        os.makedirs(os.path.dirname(record), exist_ok=True)
        atomic.write_text(record, json.dumps({"image_folder": os.path.abspath(folder)}, indent=2))


class PoolReferenceJudge:
    """Both answers against the sample's own answer, by the metric its form calls for (`metric_for`)."""

    async def judge(self, question, teacher, student, images=(), *, reference=None, skill=None):
        from comd_jax.distill.judges import METRICS, Verdict, to_scale

        if not reference:  # an instruction the LLM augmentor wrote has no answer to score against: excluded
            return Verdict(None, None, [])
        metric = METRICS[metric_for(reference)]
        return Verdict(to_scale(metric(teacher, reference)), to_scale(metric(student, reference)), [])


def user_kind(job: Job) -> Kind:
    from comd_jax import config as config_lib

    config = job.config
    d = config.distill
    if not d.teacher_url and not d.teacher_checkpoint:
        raise ValueError("the CoMD rounds on your data need a teacher: set config.distill.teacher_url (an "
                         "OpenAI-compatible base URL such as vLLM's http://host:8000/v1) or "
                         "config.distill.teacher_checkpoint (served by python -m comd_jax.serve)")
    if d.augmentor == "procedural":
        raise ValueError("config.distill.augmentor='procedural' draws new scenes of the offline world; on your "
                         "data use 'llm' (the teacher writes new instructions)")
    pool = LlavaPool.open(job, config_lib.model_config(config.model))
    if d.judge == "reference":
        unanswered = [e.id for e in pool.entries() if not e.reference]
        if unanswered:
            raise ValueError(f"config.distill.judge='reference' scores against the pool's own answers, but "
                             f"{len(unanswered)} sample(s) of {pool.path} have none (e.g. {unanswered[:5]}); "
                             "use judge='llm'")
    if multihost.is_writer():
        os.makedirs(os.path.join(job.workdir, "distill"), exist_ok=True)
        atomic.write_text(os.path.join(job.workdir, "distill", "pool_lint.json"), json.dumps(pool.lint, indent=2))

    return Kind(pool=pool, teacher_checkpoint=d.teacher_checkpoint,
                judges={"reference": lambda client: PoolReferenceJudge()},
                title=f"CoMD on {os.path.basename(pool.path)}: scores by round", report={"pool_lint": pool.lint})
