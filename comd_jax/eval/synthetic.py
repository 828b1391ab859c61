"""The offline world's held-out split, scored per skill, for any number of models.

Every turn of a conversation is a request whose history holds the reference
answers of earlier turns, so a multi-turn example scores each follow-up on its
own. A model's skill score is the mean over that skill's turns; "mean" is the
unweighted mean over skills (each skill counts the same, whatever its size).
"""
from __future__ import annotations

import collections
from typing import Mapping, Optional

from comd_jax.data.synthetic import world
from comd_jax.data.templates import ASSISTANT, USER
from comd_jax.eval.answerer import Answerer, Request
from comd_jax.eval.world_scoring import METRICS, exact_match, score_turn


def world_turns(spec: world.WorldSpec, split: str = world.HELDOUT, limit: Optional[int] = None) -> list[dict]:
    """One entry per assistant turn: request, reference reply, ground truth, skill."""
    turns = []
    for index in range(min(spec.split_size(split), limit if limit is not None else 1 << 30)):
        example = world.generate_example(spec, split, index)
        truths = example.answer.split(" | ")
        history: list = []
        conv = example.conversations
        for turn in range(len(conv) // 2):
            question, reference = conv[2 * turn]["value"], conv[2 * turn + 1]["value"]
            history.append((USER, question))
            turns.append({"id": example.id, "turn": turn, "skill": example.skill, "question": question,
                          "reference": reference, "truth": truths[turn],
                          "request": Request(tuple(history), (example.image,))})
            history.append((ASSISTANT, reference))
    return turns


def score_model(answerer: Answerer, turns: list[dict]) -> dict:
    replies = answerer.answer([t["request"] for t in turns])
    by_skill: dict = collections.defaultdict(list)
    records = []
    for t, reply in zip(turns, replies):
        value = score_turn(t["skill"], reply, t["question"], t["reference"], t["truth"])
        by_skill[t["skill"]].append((value, exact_match(reply, t["reference"])))
        records.append({"id": t["id"], "turn": t["turn"], "skill": t["skill"], "reply": reply,
                        "truth": t["truth"], "score": value})
    skills = {skill: {"metric": METRICS.get(skill, "answer"), "n": len(values),
                      "score": 100.0 * sum(v for v, _ in values) / len(values),
                      "exact_match": 100.0 * sum(e for _, e in values) / len(values)}
              for skill, values in sorted(by_skill.items())}
    scores = {skill: cell["score"] for skill, cell in skills.items()}
    scores["mean"] = sum(scores.values()) / len(scores) if scores else None
    return {"scores": scores, "skills": skills, "records": records}


def evaluate_world(answerers: Mapping[str, Answerer], spec: world.WorldSpec, *, split: str = world.HELDOUT,
                   limit: Optional[int] = None) -> dict:
    """Per-skill scores (percent) for each named model, e.g. {"student": ..., "teacher": ...}."""
    turns = world_turns(spec, split, limit)
    return {"benchmark": "world", "split": split,
            "models": {name: score_model(answerer, turns) for name, answerer in answerers.items()}}
