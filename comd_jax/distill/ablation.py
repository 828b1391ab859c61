"""CoMD vs plain distillation, over several seeds, reported as mean ± spread.

  python -m comd_jax.distill.ablation --config=configs/comd.py:ablation --workdir=DIR
      [--distributed=... as launch/train.py, on every host]

Each (variant, seed) runs the whole default pipeline in DIR/<variant>/seed<k>.
What a comparison must hold fixed is made once and shared (symlinked):
- the world, the teacher and its held-out scores, across every run: as in the paper,
  the teacher is a given model (distill.teacher_checkpoint; with none, the first run
  trains it), and the seeds vary the student;
- the student's warm-up stages and their scores, across the variants of one seed: both
  variants enter the rounds from the same student, so the rounds are all that differs.
Everything resumes like a normal run. In a multi-host job every process runs
this (the runs are collective); process 0 alone makes the links and writes
ablation.json / ablation.md, and the others wait for the links at a barrier.
"""
from __future__ import annotations

import copy
import json
import os
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from comd_jax import multihost


def _apply(config, overrides: dict):
    """A copy of `config` with nested `overrides` ({"distill": {"competitive": False}}) applied;
    an unknown key is an error, as on the command line."""
    config = copy.deepcopy(config)

    def merge(target, values, where):
        for key, value in values.items():
            if key not in target:
                raise KeyError(f"ablation override {where}{key}: no such config field")
            if isinstance(value, dict):
                merge(target[key], value, f"{where}{key}.")
            else:
                target[key] = value

    with config.unlocked():
        merge(config, overrides, "")
    return config


def _share(src_root: str, dst: str, names=("world",)):
    """Links `names` (paths under a run's workdir) from an earlier run. Process 0 links (the
    workdir is shared); the caller's barrier makes the links visible to the others."""
    if not multihost.is_writer():
        return
    for name in names:
        src, link = os.path.join(src_root, name), os.path.join(dst, name)
        if os.path.exists(src) and not os.path.exists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(src, link)


def run_ablation(config, workdir: str) -> dict:
    from comd_jax.distill.driver import run_comd

    results: dict = {}
    added: dict = {}  # variant -> per run, new teacher-answered instructions per round
    teacher_means: dict = {}  # variant -> per run, the teacher's held-out mean
    skills: dict = {}  # variant -> per run, the last round's score by skill
    variants = config.ablation.variants.to_dict()
    # Every run: the world, the teacher (trained by the first run unless it is a given checkpoint)
    # and its held-out scores. Both variants of a seed: the warm-up student and its scores.
    trained_teacher = () if config.distill.teacher_checkpoint else tuple(
        os.path.join("checkpoints", s) for s in config.teacher_stages)
    teacher = ("world",) + trained_teacher + (os.path.join("eval", "teacher"),)
    student = tuple(os.path.join("checkpoints", s) for s in config.stages) + (os.path.join("eval", "baseline"),)
    first_run = None
    for seed in config.ablation.seeds:
        first_of_seed = None
        for name, overrides in variants.items():
            run_dir = os.path.join(workdir, name, f"seed{seed}")
            # One teacher for all: trained with the first seed, whatever this run's seed.
            teacher_seed = config.teacher_seed if config.teacher_seed >= 0 else config.ablation.seeds[0]
            cfg = _apply(config, {"seed": seed, "teacher_seed": teacher_seed, **overrides})
            with multihost.writing(f"comd_jax.ablation: {name} seed {seed} linked"):
                if first_run is not None:
                    _share(first_run, run_dir, teacher)
                if first_of_seed is not None:
                    _share(first_of_seed, run_dir, student)
            print(f"== ablation: {name}, seed {seed} -> {run_dir} ==", flush=True)
            out = run_comd(cfg, run_dir)
            first_run, first_of_seed = first_run or run_dir, first_of_seed or run_dir
            results.setdefault(name, []).append([r["student"]["world"]["mean"] for r in out["rounds"]])
            # The comparison is fair only if the variants ask the teacher as often: keep the counts.
            added.setdefault(name, []).append([r.get("added") for r in out["rounds"]])
            teacher_means.setdefault(name, []).append(out.get("teacher", {}).get("world", {}).get("mean"))
            final = out["rounds"][-1]["student"]["world"] if out["rounds"] else {}
            skills.setdefault(name, []).append({k: v for k, v in final.items() if k != "mean"
                                                and isinstance(v, (int, float))})
    summary = {name: {"mean_by_round": np.mean(runs, axis=0).tolist(), "spread_by_round": np.std(runs, axis=0).tolist(),
                      "runs": runs, "added_by_round": added[name], "teacher_mean": teacher_means[name]}
               for name, runs in results.items()}
    lines = ["| variant | " + " | ".join(f"round {r}" for r in range(len(next(iter(results.values()))[0]))) + " |"]
    lines.append("| --- |" + " --- |" * (len(lines[0].split("|")) - 3))
    for name, s in summary.items():
        lines.append(f"| {name} | " + " | ".join(f"{m:.1f} ± {d:.1f}" for m, d in
                                                 zip(s["mean_by_round"], s["spread_by_round"])) + " |")
    # Runs of one seed share their warm-up student, so the per-seed difference is the sharper test.
    first = next(iter(summary))
    for name in list(summary)[1:]:
        diff = np.asarray(summary[name]["runs"]) - np.asarray(summary[first]["runs"])
        # The standard error says whether a mean difference is more than seed-to-seed noise
        # (sample std / sqrt(seeds); none from one seed).
        stderr = (diff.std(axis=0, ddof=1) / np.sqrt(len(diff)) if len(diff) > 1
                  else np.full(diff.shape[1], np.nan))
        summary[name]["minus_first"] = {"first": first, "mean_by_round": diff.mean(axis=0).tolist(),
                                        "spread_by_round": diff.std(axis=0).tolist(),
                                        "stderr_by_round": [None if np.isnan(e) else float(e) for e in stderr],
                                        "ahead_by_round": (diff > 0).sum(axis=0).tolist(),
                                        "behind_by_round": (diff < 0).sum(axis=0).tolist()}
        paired = summary[name]["minus_first"]
        lines.append(f"| {name} − {first}, paired by seed (standard error; ahead/behind) | " + " | ".join(
            f"{m:+.1f} ± {d:.1f} (se {'–' if e is None else f'{e:.1f}'}; {a}/{b})" for m, d, e, a, b in zip(
                *(paired[k] for k in ("mean_by_round", "spread_by_round", "stderr_by_round", "ahead_by_round",
                                      "behind_by_round")))) + " |")
    scores = [t for s in summary.values() for t in s["teacher_mean"] if t is not None]
    if scores:
        lines.append("| teacher | " + " | ".join(f"{np.mean(scores):.1f}" for _ in lines[0].split("|")[2:-1]) + " |")
    lines += _skill_lines(summary, skills, first)
    lines.append("")
    for name, s in summary.items():
        calls = sorted({sum(a or 0 for a in run) for run in s["added_by_round"]})
        lines.append(f"- {name}: new teacher-answered instructions per run over all rounds: "
                     f"{', '.join(str(c) for c in calls)} (per round, each run: {s['added_by_round']})")
    if multihost.is_writer():
        with open(os.path.join(workdir, "ablation.json"), "w") as f:
            json.dump(summary, f, indent=2)
        with open(os.path.join(workdir, "ablation.md"), "w") as f:
            f.write("Held-out student score (mean over skills, %), mean ± std over seeds\n\n" + "\n".join(lines)
                    + "\n")
        print("\n".join(lines))
    return summary


def _skill_lines(summary: dict, skills: dict, first: str) -> list:
    """Per skill, after the last round: each variant's mean, and its paired difference with the
    first variant (mean and standard error over seeds): where a variant helps and where not."""
    names = sorted({k for runs in skills.values() for run in runs for k in run})
    if not names or len(summary) < 2:
        return []
    others = [n for n in summary if n != first]
    lines = ["", "After the last round, by skill: mean over seeds; each variant minus " + first +
             ", paired by seed (standard error)", "",
             "| skill | " + first + " | " + " | ".join(f"{n} − {first}" for n in others) + " |",
             "| --- |" + " --- |" * (1 + len(others))]
    for skill in names:
        base = np.array([run.get(skill, np.nan) for run in skills[first]], float)
        cells = [f"{np.nanmean(base):.1f}"]
        for n in others:
            diff = np.array([run.get(skill, np.nan) for run in skills[n]], float) - base
            se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.nan
            cells.append(f"{np.nanmean(diff):+.1f}" + ("" if np.isnan(se) else f" ({se:.1f})"))
        lines.append(f"| {skill} | " + " | ".join(cells) + " |")
    for n in summary:
        summary[n]["last_round_by_skill"] = skills[n]
    return lines


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Experiment config (path:preset).", lock_config=True)
    flags.DEFINE_string("workdir", "workdir_ablation", "Output folder.")
    from comd_jax import distributed

    distributed.define_flags()  # multi-host start-up, as launch/train.py

    def main(argv):
        del argv
        from comd_jax import launcher

        config = flags.FLAGS.config
        # One cache for every run and teacher server: the seeds compile the same functions.
        workdir = launcher.start(config, flags.FLAGS.workdir)
        from comd_jax import experiment

        experiment.validate(config)  # every variant's run validates its own; this refuses before any
        run_ablation(config, workdir)

    from comd_jax.cli import config_arg

    app.run(main, argv=config_arg.resolve(sys.argv))
