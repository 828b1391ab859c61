"""Benchmarks by name, for models given as Answerers: what the launcher and the
distillation loop call.

  run_benchmark("world", {"student": a, "teacher": b}, settings, out_dir)   # after each round
  evaluate_checkpoint(config, "WORKDIR/checkpoints/tune", "scienceqa", "out", settings)  # launch/eval.py

Each result is {"benchmark", "models": {name: {"scores": {...}, ...}}} and is
written as JSON + a markdown table when `out_dir` is given.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping, Optional

from comd_jax.eval import report
from comd_jax.eval.answerer import Answerer

WORLD_SCIENCEQA = "scienceqa_style"  # the world's multiple choice through the ScienceQA evaluator


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    # scienceqa: LLaVA's question file, ScienceQA's problems.json, the image folder
    question_file: str = ""
    problems_file: str = ""
    image_folder: str = ""
    # judged (LLaVA-Bench shape): questions / reference answers / optional context JSONL
    bench_questions: str = ""
    bench_answers: str = ""
    bench_context: str = ""
    judge_url: str = ""  # an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1
    judge_model: str = ""
    judge_api_key: str = ""
    judge_swap: bool = False
    judge_retries: int = 2
    # world: the spec (None: not a world run) and where its ScienceQA-format export goes
    world_spec: Optional[object] = None
    limit: Optional[int] = None  # first N questions only (smoke runs)


def _require(settings: EvalSettings, *names: str):
    missing = [n for n in names if not getattr(settings, n)]
    if missing:
        raise ValueError(f"this benchmark needs {', '.join('--' + n for n in missing)}")


def _scienceqa(answerers, settings: EvalSettings, out_dir, judge) -> dict:
    from comd_jax.eval.scienceqa import evaluate_scienceqa

    _require(settings, "question_file", "problems_file")
    return {"benchmark": "scienceqa", "models": {
        name: evaluate_scienceqa(a, settings.question_file, settings.problems_file, settings.image_folder,
                                 limit=settings.limit) for name, a in answerers.items()}}


def _judged(answerers, settings: EvalSettings, out_dir, judge) -> dict:
    from comd_jax.eval.judged import evaluate_judged, judge_for, load_bench

    _require(settings, "bench_questions", "bench_answers")
    if judge is None:
        _require(settings, "judge_url", "judge_model")
        judge = judge_for(settings.judge_url, settings.judge_model, api_key=settings.judge_api_key,
                          retries=settings.judge_retries)
    items = load_bench(settings.bench_questions, settings.bench_answers, settings.bench_context)[:settings.limit]
    return {"benchmark": "judged", "models": {
        name: evaluate_judged(a, items, judge, settings.image_folder, swap=settings.judge_swap)
        for name, a in answerers.items()}}


def _world(answerers, settings: EvalSettings, out_dir, judge) -> dict:
    import tempfile

    from comd_jax.eval.scienceqa import evaluate_scienceqa
    from comd_jax.eval.synthetic import evaluate_world
    from comd_jax.eval.world_scienceqa import export_scienceqa

    if settings.world_spec is None:
        raise ValueError("the world benchmark needs the world's spec (config.data.kind='world')")
    result = evaluate_world(answerers, settings.world_spec, limit=settings.limit)
    export_dir = os.path.join(out_dir, "world_scienceqa") if out_dir else tempfile.mkdtemp(prefix="world_sqa")
    files = export_scienceqa(settings.world_spec, export_dir)
    for name, a in answerers.items():
        sqa = evaluate_scienceqa(a, files["question_file"], files["problems_file"], files["image_folder"])
        result["models"][name]["scienceqa"] = sqa
        result["models"][name]["scores"][WORLD_SCIENCEQA] = sqa["scores"]["average"]
    return result


BENCHMARKS: dict[str, Callable] = {"scienceqa": _scienceqa, "judged": _judged, "llava_bench": _judged,
                                   "world": _world}


def run_benchmark(name: str, answerers: Mapping[str, Answerer], settings: EvalSettings,
                  out_dir: Optional[str] = None, *, judge=None) -> dict:
    """Scores every answerer on benchmark `name`; writes {name}.json/.md into `out_dir` if given.
    `judge`: an eval.judge.PairwiseJudge (else one is built from settings.judge_url/judge_model)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    result = BENCHMARKS[name](dict(answerers), settings, out_dir, judge)
    if out_dir:
        report.write_result(result, out_dir, name)
    return result
