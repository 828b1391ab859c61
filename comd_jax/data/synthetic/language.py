"""Questions, answers and captions about a scene, one function per skill.

Each skill function takes (rng, scene) and returns a `QA` whose short answer
is the ground truth, or None when the scene cannot support the question
(the caller then draws another scene). Skills are ordered roughly by how hard
they are for a small model: reading one object's attribute (colour, shape) is
easier than checking a combination (existence), which is easier than
aggregating over the scene (counting) or relating two objects (spatial
relation, comparison).
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable

import numpy as np

from comd_jax.data.synthetic.scene import PALETTE, SHAPES, Scene, SceneObject


@dataclasses.dataclass(frozen=True)
class QA:
    question: str
    answer: str  # the assistant's reply
    short: str  # ground truth, e.g. "red", "3", "yes", "B"
    options: tuple[str, ...] = ()  # the answer domain, for multiple choice


def pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _unique(objects, key) -> list[SceneObject]:
    values = [key(o) for o in objects]
    return [o for o, v in zip(objects, values) if values.count(v) == 1]


def colour(rng, scene: Scene) -> QA | None:
    candidates = _unique(scene.objects, lambda o: o.shape)
    if not candidates:
        return None
    obj = pick(rng, candidates)
    question = pick(
        rng,
        (
            "What colour is the {s}?",
            "What is the colour of the {s}?",
            "Which colour does the {s} have?",
        ),
    ).format(s=obj.shape)
    return QA(question, f"The {obj.shape} is {obj.colour}.", obj.colour, tuple(PALETTE))


def shape(rng, scene: Scene) -> QA | None:
    candidates = _unique(scene.objects, lambda o: o.colour)
    if not candidates:
        return None
    obj = pick(rng, candidates)
    question = pick(
        rng,
        (
            "What shape is the {c} object?",
            "What is the shape of the {c} object?",
            "Which shape is {c}?",
        ),
    ).format(c=obj.colour)
    return QA(question, f"The {obj.colour} object is a {obj.shape}.", obj.shape, SHAPES)


def counting(rng, scene: Scene) -> QA | None:
    kind = pick(rng, ("all", "colour", "shape"))
    if kind == "all":
        n = len(scene.objects)
        question = pick(
            rng,
            (
                "How many objects are there?",
                "How many shapes are in the image?",
                "Count the objects in the picture.",
            ),
        )
        noun = "object" if n == 1 else "objects"
    elif kind == "colour":
        c = pick(rng, [o.colour for o in scene.objects])
        n = sum(o.colour == c for o in scene.objects)
        question = f"How many {c} objects are there?"
        noun = f"{c} object" if n == 1 else f"{c} objects"
    else:
        s = pick(rng, [o.shape for o in scene.objects])
        n = sum(o.shape == s for o in scene.objects)
        question = f"How many {s}s are there?"
        noun = s if n == 1 else f"{s}s"
    verb = "is" if n == 1 else "are"
    return QA(question, f"There {verb} {n} {noun}.", str(n), tuple(str(i) for i in range(1, 7)))


def spatial_relation(rng, scene: Scene) -> QA | None:
    clear = _clear_pairs(scene)
    if not clear:
        return None
    a, b, axis = pick(rng, clear)
    if axis == "x":
        rel = "left" if a.x < b.x else "right"
        first, second = ("left", "right") if rng.random() < 0.5 else ("right", "left")
        question = f"Is the {a.name} to the {first} or to the {second} of the {b.name}?"
        return QA(
            question, f"The {a.name} is to the {rel} of the {b.name}.", rel, ("left", "right")
        )
    rel = "above" if a.y < b.y else "below"
    first, second = ("above", "below") if rng.random() < 0.5 else ("below", "above")
    question = f"Is the {a.name} {first} or {second} the {b.name}?"
    return QA(question, f"The {a.name} is {rel} the {b.name}.", rel, ("above", "below"))


def _clear_pairs(scene: Scene) -> list[tuple[SceneObject, SceneObject, str]]:
    """Ordered pairs whose relation along one axis is unmistakable."""
    gap = 0.15 * scene.image_size
    pairs = []
    for a in scene.objects:
        for b in scene.objects:
            if a is b:
                continue
            dx, dy = abs(a.x - b.x), abs(a.y - b.y)
            if dx >= gap and dx >= 1.5 * dy:
                pairs.append((a, b, "x"))
            elif dy >= gap and dy >= 1.5 * dx:
                pairs.append((a, b, "y"))
    return pairs


def comparison(rng, scene: Scene) -> QA | None:
    if rng.random() < 0.5:
        pairs = [(a, b) for a in scene.objects for b in scene.objects if a.size != b.size]
        if not pairs:
            return None
        a, b = pick(rng, pairs)
        larger = rng.random() < 0.5
        word = "larger" if larger else "smaller"
        winner = a if (a.radius > b.radius) == larger else b
        return QA(
            f"Which is {word}, the {a.name} or the {b.name}?",
            f"The {winner.name} is {word}.",
            winner.name,
            (a.name, b.name),
        )
    colours = list(PALETTE)
    c1, c2 = (colours[int(i)] for i in rng.choice(len(colours), size=2, replace=False))
    n1, n2 = (sum(o.colour == c for o in scene.objects) for c in (c1, c2))
    if n1 == n2:
        return None
    more = c1 if n1 > n2 else c2
    return QA(
        f"Are there more {c1} objects or {c2} objects?",
        f"There are more {more} objects.",
        more,
        (c1, c2),
    )


def existence(rng, scene: Scene) -> QA | None:
    present = {(o.colour, o.shape) for o in scene.objects}
    if rng.random() < 0.5:
        c, s = pick(rng, sorted(present))
    else:
        # A near miss (shares colour or shape with something present) is harder.
        near = sorted({(c, s) for c in PALETTE for s in SHAPES} - present)
        near = [p for p in near if any(p[0] == q[0] or p[1] == q[1] for q in present)] or near
        c, s = pick(rng, near)
    question = pick(
        rng,
        (
            "Is there a {c} {s} in the image?",
            "Does the picture contain a {c} {s}?",
            "Can you see a {c} {s}?",
        ),
    ).format(c=c, s=s)
    if (c, s) in present:
        return QA(question, f"Yes, there is a {c} {s}.", "yes", ("yes", "no"))
    return QA(question, f"No, there is no {c} {s}.", "no", ("yes", "no"))


_ROWS = ("top", "middle", "bottom")
_COLUMNS = ("left", "centre", "right")


def position_name(obj: SceneObject, image_size: int) -> str:
    row = _ROWS[min(2, int(3 * obj.y / image_size))]
    column = _COLUMNS[min(2, int(3 * obj.x / image_size))]
    if row == "middle":
        return "centre" if column == "centre" else column
    return row if column == "centre" else f"{row} {column}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(scene: Scene) -> str:
    objects = sorted(scene.objects, key=lambda o: (o.x, o.y))
    n = len(objects)
    parts = [f"There {'is 1 object' if n == 1 else f'are {n} objects'}."]
    for o in objects:
        where = position_name(o, scene.image_size)
        parts.append(
            f"{_article(o.size).capitalize()} {o.size} {o.colour} {o.shape} at the {where}."
        )
    return " ".join(parts)


def detailed_description(rng, scene: Scene) -> QA | None:
    question = pick(
        rng,
        (
            "Describe the image in detail.",
            "Give a detailed description of the picture.",
            "What is in this image? Describe every object.",
        ),
    )
    text = describe(scene)
    return QA(question, text, text)


def caption(scene: Scene) -> str:
    names = [
        f"{_article(o.size)} {o.size} {o.colour} {o.shape}"
        for o in sorted(scene.objects, key=lambda o: (o.x, o.y))
    ]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return listed[0].upper() + listed[1:] + "."


CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "Write a short caption for this picture.",
    "What does the image show, in a few words?",
    "Summarize the picture.",
)

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def multiple_choice(rng, scene: Scene) -> QA | None:
    """ScienceQA-style: the question, lettered options, answer is a letter."""
    base = pick(rng, (colour, shape, counting, existence, spatial_relation, comparison))(rng, scene)
    if base is None or not base.options:
        return None
    distractors = [o for o in base.options if o != base.short]
    count = min(3, len(distractors))
    chosen = [distractors[int(i)] for i in rng.choice(len(distractors), size=count, replace=False)]
    options = chosen + [base.short]
    options = [options[int(i)] for i in rng.permutation(len(options))]
    letters = string.ascii_uppercase[: len(options)]
    lines = [base.question] + [f"{l}. {o}" for l, o in zip(letters, options)] + [MC_INSTRUCTION]
    letter = letters[options.index(base.short)]
    return QA("\n".join(lines), letter, letter)


SINGLE_TURN_SKILLS: dict[str, Callable] = {
    "colour": colour,
    "shape": shape,
    "existence": existence,
    "counting": counting,
    "spatial_relation": spatial_relation,
    "comparison": comparison,
    "detailed_description": detailed_description,
    "multiple_choice": multiple_choice,
}
# The skills a follow-up turn may use in a multi-turn conversation.
FOLLOW_UP_SKILLS = ("colour", "shape", "existence", "counting", "spatial_relation", "comparison")
