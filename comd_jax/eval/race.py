"""The report's first screen: the paper's three questions, answered from the scores by round.

1. The student's headline score by round, next to the teacher's.
2. Per skill, where the student (after the last round) passes the teacher.
3. Where the student started behind the teacher (after its warm-up) and passed it during
   the rounds, and in which round first: what the rounds earned, not the warm-up.

`race(by_round, headline)` returns the numbers (kept in results.json as `race`);
`first_screen(race)` the markdown. `by_round` is {"baseline" | round: {"student": {...},
"teacher": {...}}}, metric → value, the report's own input.
"""
from __future__ import annotations

from typing import Mapping, Optional


def _skills(scores: Mapping, headline: Optional[str]) -> list:
    return sorted(k for k, v in scores.items() if k != headline and isinstance(v, (int, float))
                  and not k.endswith(("/exact_match", "/unparsed", "/average_lenient")))


def race(by_round: Mapping[str, Mapping], headline: Optional[str]) -> dict:
    rounds = [r for r in by_round if r != "baseline"]
    if "baseline" not in by_round or not rounds:
        raise ValueError("race: needs the baseline and at least one round")
    teacher = by_round[rounds[-1]]["teacher"]
    baseline = by_round["baseline"]["student"]
    last = by_round[rounds[-1]]["student"]
    scores = {"baseline": baseline.get(headline), **{r: by_round[r]["student"].get(headline) for r in rounds}}
    passes, earned, kept = [], [], []
    for skill in _skills(teacher, headline):
        t = teacher.get(skill)
        if t is None or last.get(skill) is None:
            continue
        if last[skill] > t:
            passes.append({"skill": skill, "student": last[skill], "teacher": t})
        start = baseline.get(skill)
        if start is not None and start < t:
            first = next((r for r in rounds if (by_round[r]["student"].get(skill) or float("-inf")) > t), None)
            if first is not None:
                earned.append({"skill": skill, "warm_up": start, "teacher": t, "first_round": first,
                               "last_round": last[skill], "still_ahead": last[skill] > t})
        elif start is not None and last[skill] > t:
            kept.append(skill)  # ahead (or level) already after the warm-up
    headline_rounds = [v for v in scores.values() if v is not None]
    return {"headline": headline, "student": scores, "teacher": teacher.get(headline),
            "rises_every_round": all(b > a for a, b in zip(headline_rounds, headline_rounds[1:])),
            "passes_teacher": passes, "passed_during_rounds": earned, "ahead_since_warm_up": kept}


def _num(v) -> str:
    return "—" if v is None else f"{v:.1f}"


def first_screen(r: dict) -> str:
    names = list(r["student"])
    head = "| | " + " | ".join("warm-up" if n == "baseline" else f"round {n}" for n in names) + " | teacher |\n"
    lines = [f"**{r['headline'] or 'score'} by round** (student; the teacher is scored once):\n\n", head,
             "| --- |" + " --- |" * (len(names) + 1) + "\n",
             f"| student | " + " | ".join(_num(r["student"][n]) for n in names) + f" | {_num(r['teacher'])} |\n\n",
             f"Rises in every round: {'yes' if r['rises_every_round'] else 'no'}.\n\n"]
    if r["passes_teacher"]:
        lines.append("**Where the student passes the teacher** (after the last round): " + ", ".join(
            f"{p['skill']} ({_num(p['student'])} vs {_num(p['teacher'])})" for p in r["passes_teacher"]) + ".\n\n")
    else:
        lines.append("**Where the student passes the teacher** (after the last round): nowhere.\n\n")
    if r["passed_during_rounds"]:
        lines.append("**Behind the teacher after the warm-up, passed during the rounds**: " + ", ".join(
            f"{p['skill']} ({_num(p['warm_up'])} → {_num(p['last_round'])}, teacher {_num(p['teacher'])}; first in "
            f"round {p['first_round']}{'' if p['still_ahead'] else ', not held'})"
            for p in r["passed_during_rounds"]) + ".\n\n")
    else:
        lines.append("**Behind the teacher after the warm-up, passed during the rounds**: none.\n\n")
    if r["ahead_since_warm_up"]:
        lines.append("Ahead of or level with the teacher since the warm-up (not the rounds' doing): "
                     + ", ".join(r["ahead_since_warm_up"]) + ".\n\n")
    return "".join(lines)
