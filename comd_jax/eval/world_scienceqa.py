"""The world's multiple-choice questions written as ScienceQA's LLaVA eval files.

So the default run reports a ScienceQA-style accuracy through exactly the
evaluator users run on the real benchmark. The world has no subjects, grades or
text contexts: every problem is "natural science", grade 1, with an image, so
NAT / IMG / G1-6 equal the average and the other columns stay empty.
"""
from __future__ import annotations

import json
import os
import re

from comd_jax.data.synthetic import language, world
from comd_jax.data.templates import IMAGE_PLACEHOLDER

_OPTION = re.compile(r"^([A-Z])\. (.*)$")


def split_question(text: str) -> tuple[str, list[str]]:
    """A world multiple-choice prompt -> (question, option texts), placeholder and suffix dropped."""
    lines = [l for l in text.replace(IMAGE_PLACEHOLDER, "").strip().splitlines()
             if l.strip() and l.strip() != language.MC_INSTRUCTION]
    options = [m.group(2) for m in map(_OPTION.match, lines) if m]
    question = " ".join(l for l in lines if not _OPTION.match(l))
    return question, options


def export_scienceqa(spec: world.WorldSpec, out_dir: str, split: str = world.HELDOUT) -> dict[str, str]:
    """Writes questions.json, problems.json and images/; returns their paths."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    questions, problems = [], {}
    for index in range(spec.split_size(split)):
        if spec.skills[index % len(spec.skills)] != "multiple_choice":
            continue  # skills go round-robin: skip the others without rendering them
        example = world.generate_example(spec, split, index)
        question, options = split_question(example.conversations[0]["value"])
        image = f"images/{example.id}.png"
        with open(os.path.join(out_dir, image), "wb") as f:
            f.write(example.png)
        lettered = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))
        questions.append({"id": example.id, "image": image, "conversations": [
            {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{question}\n{lettered}"},
            {"from": "gpt", "value": example.answer}]})
        problems[example.id] = {"question": question, "choices": options, "answer": ord(example.answer) - 65,
                                "hint": "", "image": image, "subject": "natural science", "grade": "grade1",
                                "category": "offline world", "split": "test"}
    paths = {"question_file": os.path.join(out_dir, "questions.json"),
             "problems_file": os.path.join(out_dir, "problems.json"), "image_folder": out_dir}
    for key, value in (("question_file", questions), ("problems_file", problems)):
        with open(paths[key], "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1)
    return paths
