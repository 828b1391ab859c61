"""`config.eval.benchmarks` inside a CoMD run: the student before round 0 (the baseline) and
after every round, the teacher once, through its endpoint.

  scienceqa    LLaVA's question file + ScienceQA's problems.json, scored by LLaVA's rules
  llava_bench  questions / reference answers / context JSONL, judged through the judge endpoint
  world        the offline world's held-out split per skill (a plug-in of the world's own)

Each result lands in WORKDIR/eval/<who>/<benchmark>.json (who: baseline, round0, ..., teacher)
the moment it finishes, with the settings it was computed under. A rerun loads every result
whose settings match and computes only the rest, so a killed run keeps what it finished.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Optional, Protocol

from comd_jax import atomic, multihost
from comd_jax.eval.suite import EvalSettings

KNOWN = ("scienceqa", "llava_bench", "world")
HEADLINE = {"scienceqa": "average", "llava_bench": "all", "world": "mean"}  # the number a report leads with
_FILES = {"scienceqa": ("scienceqa_questions", "scienceqa_problems"),
          "llava_bench": ("llava_bench_questions", "llava_bench_answers")}
_FOLDERS = {"scienceqa": "scienceqa_images", "llava_bench": "llava_bench_images"}


class Benchmark(Protocol):
    def teacher(self, answerer) -> dict:
        """The teacher's result ({"scores": {...}, ...}), its answers from `answerer` (its endpoint)."""
        ...

    def student(self, round_index: int, student) -> dict:
        """The student's result after round `round_index` (-1: the baseline, after the warm-up)."""
        ...

    settings: Mapping  # what the result depends on besides the model: a changed one is recomputed


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """`config.eval`, validated once at start-up."""
    benchmarks: tuple
    files: EvalSettings  # image_folder: ScienceQA's
    max_new_tokens: int
    llava_bench_images: str = ""  # default: the questions file's folder


def eval_section(config) -> EvalSection:
    """Refuses an unknown benchmark, or one whose files are missing, by the config field's name."""
    e = config.eval
    names = tuple(e.benchmarks)
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise ValueError(f"config.eval.benchmarks: unknown {unknown}; choose from {list(KNOWN)}")
    if "world" in names and config.data.kind != "world":
        raise ValueError("config.eval.benchmarks: 'world' scores the offline world's held-out split, and this "
                         f"run's data.kind is {config.data.kind!r}; set --config.eval.benchmarks to "
                         "\"('scienceqa',)\", \"('llava_bench',)\" (with their files) or \"()\"")
    for name in names:
        for field in _FILES.get(name, ()):
            path = getattr(e, field)
            if not path:
                raise ValueError(f"config.eval.benchmarks has {name!r}: set config.eval.{field}")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"config.eval.{field}={path!r}: no such file")
        folder = getattr(e, _FOLDERS[name]) if name in _FOLDERS else ""
        if folder and not os.path.isdir(folder):
            raise FileNotFoundError(f"config.eval.{_FOLDERS[name]}={folder!r}: no such folder")
    context = e.llava_bench_context
    if "llava_bench" in names and context and not os.path.isfile(context):
        raise FileNotFoundError(f"config.eval.llava_bench_context={context!r}: no such file")
    files = EvalSettings(question_file=e.scienceqa_questions, problems_file=e.scienceqa_problems,
                         image_folder=e.scienceqa_images,
                         bench_questions=e.llava_bench_questions,
                         bench_answers=e.llava_bench_answers, bench_context=context,
                         limit=e.limit or None)
    return EvalSection(names, files, e.max_new_tokens or config.distill.answer_max_tokens,
                       e.llava_bench_images or os.path.dirname(files.bench_questions))


class SuiteBenchmark:
    """A benchmark of `comd_jax.eval.suite` (ScienceQA, LLaVA-Bench) over the run's models."""

    def __init__(self, name: str, settings: EvalSettings, *, judge=None, image_folder: str = ""):
        self.name, self.judge = name, judge
        self.files = dataclasses.replace(settings, image_folder=image_folder)
        self.settings = {k: v for k, v in dataclasses.asdict(self.files).items() if k not in ("judge_api_key",)}
        if judge is not None:  # another judge is another score
            c = judge.client.config
            self.settings["judge"] = [c.base_url, c.model]

    def _run(self, who: str, answerer) -> dict:
        from comd_jax.eval.suite import run_benchmark

        return run_benchmark(self.name, {who: answerer}, self.files, judge=self.judge)["models"][who]

    def teacher(self, answerer) -> dict:
        return self._run("teacher", answerer)

    def student(self, round_index: int, student) -> dict:
        label = "baseline" if round_index < 0 else f"round {round_index}"
        return self._run("student", student.answerer(round_index, progress=f"{self.name}: student, {label}"))


def suite_benchmarks(section: EvalSection, judge_client, judge_max_tokens: int = 1024) -> dict:
    """The benchmarks any data can run, by name; LLaVA-Bench's judge is the judge endpoint, at
    LLaVA's review temperature (0.2)."""
    from comd_jax.eval.judge import PairwiseJudge

    files = section.files
    table = {"scienceqa": lambda: SuiteBenchmark("scienceqa", files, image_folder=files.image_folder)}
    if judge_client is not None:
        judge = PairwiseJudge(judge_client, max_tokens=judge_max_tokens, retries=files.judge_retries,
                              temperature=0.2)
        table["llava_bench"] = lambda: SuiteBenchmark("llava_bench", files, judge=judge,
                                                      image_folder=section.llava_bench_images)
    return table


class Evaluations:
    """The run's benchmarks, each result kept on disk by who was scored."""

    def __init__(self, workdir: str, names: tuple, benchmarks: Mapping[str, Benchmark], max_new_tokens: int):
        missing = [n for n in names if n not in benchmarks]
        if missing:
            raise ValueError(f"config.eval.benchmarks: {missing} not available here (offered: {sorted(benchmarks)})")
        self.dir, self.names, self.benchmarks = os.path.join(workdir, "eval"), names, benchmarks
        self.max_new_tokens = max_new_tokens

    def _kept(self, who: str, name: str, compute) -> dict:
        path = os.path.join(self.dir, who, f"{name}.json")
        settings = json.loads(json.dumps({**self.benchmarks[name].settings, "max_new_tokens": self.max_new_tokens}))
        if os.path.exists(path):
            with open(path) as f:
                kept = json.load(f)
            if kept.get("settings") == settings:
                return kept["result"]
        # the teacher's answers come from process 0's endpoint calls: its failure is everyone's
        with multihost.writing(f"comd_jax.distill.evaluation: {who} {name}"):
            result = compute()
            if multihost.is_writer():
                os.makedirs(os.path.dirname(path), exist_ok=True)
                atomic.write_text(path, json.dumps({"settings": settings, "result": result}, indent=1,
                                                   ensure_ascii=False, default=str))
        return result

    @staticmethod
    def who(round_index: int) -> str:
        return "baseline" if round_index < 0 else f"round{round_index}"

    def student(self, round_index: int, student) -> dict:
        """{benchmark: result} for the student after round `round_index` (-1: the baseline)."""
        return {name: self._kept(self.who(round_index), name,
                                 lambda name=name: self.benchmarks[name].student(round_index, student))
                for name in self.names}

    def teacher(self, answerer) -> dict:
        return {name: self._kept("teacher", name, lambda name=name: self.benchmarks[name].teacher(answerer))
                for name in self.names}


def scores(results: Mapping[str, dict]) -> dict:
    """{benchmark: scores} from {benchmark: result}."""
    return {name: dict(r.get("scores") or {}) for name, r in results.items()}


def flat(by_benchmark: Mapping[str, Mapping], names: tuple) -> dict:
    """{"benchmark/metric": value} of the numbers, for the report's tables and plots."""
    return {f"{name}/{k}": v for name in names for k, v in (by_benchmark.get(name) or {}).items()
            if v is None or isinstance(v, (int, float)) and not isinstance(v, bool)}


def headline(names: tuple) -> Optional[str]:
    return f"{names[0]}/{HEADLINE[names[0]]}" if names else None
