"""Results as files: one benchmark's JSON + markdown table, and the per-round report.

`write_result` is what `launch/eval.py` writes; `write_round_report` is what
the distillation loop (and its final report) calls with every round's scores.
A benchmark result is {"benchmark", "models": {model: {"scores": {metric: value}}, ...}, ...}.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

from comd_jax.eval import plots


def fmt(value) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def scores_by_model(result: Mapping) -> dict[str, dict]:
    """{model: {metric: value}} from a benchmark result."""
    return {name: dict(r["scores"]) for name, r in result["models"].items()}


def scores_table(by_model: Mapping[str, Mapping[str, object]]) -> str:
    """Rows: metrics; columns: models (student beside teacher)."""
    models = sorted(by_model)
    metrics = list(dict.fromkeys(k for m in models for k in by_model[m]))
    return markdown_table(["metric"] + models, [[k] + [by_model[m].get(k) for m in models] for k in metrics])


def result_markdown(result: Mapping) -> str:
    parts = [f"# {result['benchmark']}\n", scores_table(scores_by_model(result))]
    for name, r in sorted(result["models"].items()):
        unparsed = r.get("unparsed") or r.get("unparseable")
        if unparsed:
            parts.append(f"\n{name}: {len(unparsed)} unparsed (counted as "
                         f"{'wrong' if result['benchmark'] != 'judged' else 'excluded'}; listed in the JSON)\n")
    return "".join(parts)


def write_result(result: Mapping, out_dir: str, name: Optional[str] = None) -> dict[str, str]:
    """{name}.json (everything, raw replies included) and {name}.md (the table)."""
    os.makedirs(out_dir, exist_ok=True)
    name = name or str(result["benchmark"])
    paths = {"json": os.path.join(out_dir, f"{name}.json"), "markdown": os.path.join(out_dir, f"{name}.md")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, ensure_ascii=False, default=str)
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(result_markdown(result))
    return paths


def round_table(results_by_round: plots.Scores, model: str) -> str:
    """Rows: rounds; columns: metrics, for one model."""
    metrics = plots.metrics_of(results_by_round)
    rows = [[str(r)] + [by_model.get(model, {}).get(k) for k in metrics] for r, by_model in results_by_round.items()]
    return markdown_table(["round"] + metrics, rows)


def write_round_report(results_by_round: plots.Scores, out_dir: str, *, title: str = "Scores by round",
                       headline: str = "mean", summary: str = "") -> dict[str, str]:
    """report.md (a table per model, last round side by side) + score_by_round.png,
    per_skill.png and last_round.png. `results_by_round`: {round: {model: {metric: value}}}, in order."""
    if not results_by_round:
        raise ValueError("no rounds to report")
    os.makedirs(out_dir, exist_ok=True)
    last = list(results_by_round)[-1]
    paths = {
        "score_by_round": plots.plot_score_by_round(results_by_round, headline,
                                                    os.path.join(out_dir, "score_by_round.png")),
        "per_skill": plots.plot_per_metric(results_by_round, os.path.join(out_dir, "per_skill.png")),
        "last_round": plots.plot_models_side_by_side(results_by_round[last], os.path.join(out_dir, "last_round.png"),
                                                     title=f"round {last}"),
    }
    parts = [f"# {title}\n\n", summary]  # the first screen (comd_jax.eval.race), then the tables
    for model in plots.models_of(results_by_round):
        parts += [f"## {model}\n\n", round_table(results_by_round, model), "\n"]
    parts += [f"## Round {last}, side by side\n\n", scores_table(results_by_round[last]), "\n"]
    parts += [f"![{key}]({os.path.basename(path)})\n\n" for key, path in paths.items()]
    paths["report"] = os.path.join(out_dir, "report.md")
    with open(paths["report"], "w", encoding="utf-8") as f:
        f.write("".join(parts))
    return paths
