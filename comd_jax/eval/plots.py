"""PNG plots of scores across distillation rounds (matplotlib, Agg: no display needed).

All take `results_by_round`: {round: {model: {metric: value or None}}}; a
missing or None value is a gap, not a zero.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

Scores = Mapping[object, Mapping[str, Mapping[str, object]]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def models_of(results_by_round: Scores) -> list[str]:
    return sorted({m for by_model in results_by_round.values() for m in by_model})


def metrics_of(results_by_round: Scores) -> list[str]:
    found = {k for by_model in results_by_round.values() for s in by_model.values() for k in s}
    return sorted(found)


def _series(results_by_round: Scores, model: str, metric: str) -> tuple[list, list]:
    xs, ys = [], []
    for i, (round_, by_model) in enumerate(results_by_round.items()):
        value = by_model.get(model, {}).get(metric)
        if value is not None:
            xs.append(i)
            ys.append(float(value))
    return xs, ys


def _style(model: str) -> dict:
    return {"linestyle": "--" if "teacher" in model else "-", "marker": "o"}


def _round_axis(ax, results_by_round: Scores):
    ax.set_xticks(range(len(results_by_round)))
    ax.set_xticklabels([str(r) for r in results_by_round])
    ax.set_xlabel("round")


def plot_score_by_round(results_by_round: Scores, metric: str, path: str, title: str = "") -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in models_of(results_by_round):
        ax.plot(*_series(results_by_round, model, metric), label=model, **_style(model))
    _round_axis(ax, results_by_round)
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} by round")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_per_metric(results_by_round: Scores, path: str, metrics: Sequence[str] = ()) -> str:
    """One panel per metric (skill), student and teacher lines across rounds."""
    plt = _pyplot()
    metrics = list(metrics) or metrics_of(results_by_round)
    cols = min(4, max(len(metrics), 1))
    rows = math.ceil(max(len(metrics), 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for model in models_of(results_by_round):
            ax.plot(*_series(results_by_round, model, metric), label=model, **_style(model))
        _round_axis(ax, results_by_round)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_models_side_by_side(scores_by_model: Mapping[str, Mapping[str, object]], path: str,
                             title: str = "", metrics: Sequence[str] = ()) -> str:
    """Grouped bars: each metric, one bar per model (e.g. the last round, student vs teacher)."""
    plt = _pyplot()
    models = sorted(scores_by_model)
    metrics = list(metrics) or sorted({k for s in scores_by_model.values() for k in s})
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(metrics) + 2), 4))
    for i, model in enumerate(models):
        values = [scores_by_model[model].get(m) for m in metrics]
        xs = [j + i * width for j, v in enumerate(values) if v is not None]
        ax.bar(xs, [float(v) for v in values if v is not None], width, label=model)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics, rotation=30, ha="right", fontsize=8)
    ax.set_title(title or "scores by model")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
