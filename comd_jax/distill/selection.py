"""Difficult selection: where the student loses by at least `threshold` (Lion: 1).

A share of the easy instructions is kept too (the knob `easy_keep`), so the
next round does not forget what the student already does well; where the
student beats the teacher by `student_margin`, the case is recorded (and can
become the target under competitive distillation).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from comd_jax.distill.judges import Verdict


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    threshold: float = 1.0
    easy_keep: float = 0.0  # share of non-hard instructions also used as augmentation seeds
    student_margin: float = 1.0


@dataclasses.dataclass
class Selection:
    hard: list  # indices
    easy_kept: list
    student_wins: list
    excluded: list  # judge gave no usable scores

    def counts(self) -> dict:
        return {k: len(v) for k, v in dataclasses.asdict(self).items()}


def select(verdicts: Sequence[Verdict], cfg: SelectionConfig, rng: np.random.Generator) -> Selection:
    hard, easy, wins, excluded = [], [], [], []
    for i, v in enumerate(verdicts):
        if not v.valid:
            excluded.append(i)
            continue
        gap = v.teacher - v.student
        if gap >= cfg.threshold:
            hard.append(i)
        else:
            easy.append(i)
        if -gap >= cfg.student_margin:
            wins.append(i)
    keep = int(round(cfg.easy_keep * len(easy)))
    easy_kept = sorted(rng.choice(easy, size=keep, replace=False).tolist()) if keep else []
    return Selection(hard, easy_kept, wins, excluded)
