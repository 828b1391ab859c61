"""The offline world: deterministic examples from (seed, split, index).

Each example draws from its own generator seeded by (seed, split, index), so
examples can be produced in any order or in parallel and still be the same
bytes. Splits:
  captions      stage-1 pairs: image + short caption (skill "caption")
  instructions  the instruction pool, skills in round-robin order
  heldout       evaluation, same skill mix, disjoint random streams
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator

import numpy as np
from PIL import Image

from comd_jax.data.synthetic import language, scene
from comd_jax.data.templates import IMAGE_PLACEHOLDER

CAPTIONS, INSTRUCTIONS, HELDOUT = "captions", "instructions", "heldout"
AUGMENT = "augment"  # not a stored split: the procedural augmentor's own stream of new scenes
SPLITS = (CAPTIONS, INSTRUCTIONS, HELDOUT)
_SPLIT_STREAM = {CAPTIONS: 1, INSTRUCTIONS: 2, HELDOUT: 3, AUGMENT: 4}
MULTI_TURN = "multi_turn"
SKILLS = tuple(language.SINGLE_TURN_SKILLS) + (MULTI_TURN,)


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """Everything that decides the world's content."""

    seed: int = 0
    image_size: int = 32
    num_captions: int = 2000
    num_instructions: int = 4000
    num_heldout: int = 450
    max_objects: int = 5
    skills: tuple[str, ...] = SKILLS

    def __post_init__(self):
        if self.image_size < 16 or not 1 <= self.max_objects <= 6:
            raise ValueError(f"image_size >= 16 and 1 <= max_objects <= 6 needed: {self}")
        unknown = set(self.skills) - set(SKILLS)
        if unknown or not self.skills:
            raise ValueError(f"unknown skills {sorted(unknown)}; known: {SKILLS}")
        object.__setattr__(self, "skills", tuple(self.skills))

    def split_size(self, split: str) -> int:
        return {
            CAPTIONS: self.num_captions,
            INSTRUCTIONS: self.num_instructions,
            HELDOUT: self.num_heldout,
        }[split]


@dataclasses.dataclass(frozen=True)
class WorldExample:
    id: str
    image: np.ndarray  # uint8 [S, S, 3]
    conversations: tuple[dict[str, str], ...]  # LLaVA turns: {"from", "value"}
    skill: str
    answer: str  # ground truth; turns joined by " | " for multi-turn
    scene: str  # the scene as JSON, so answers can be recomputed

    @property
    def png(self) -> bytes:
        return encode_png(self.image)


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def generate_example(spec: WorldSpec, split: str, index: int) -> WorldExample:
    rng = np.random.default_rng([spec.seed, _SPLIT_STREAM[split], index])
    if split == CAPTIONS:
        the_scene = _scene(rng, spec)
        prompt = language.pick(rng, language.CAPTION_PROMPTS)
        turns = [(f"{IMAGE_PLACEHOLDER}\n{prompt}", language.caption(the_scene))]
        skill, answer = "caption", turns[0][1]
    else:
        skill = spec.skills[index % len(spec.skills)]
        the_scene, qas = _scene_and_questions(rng, spec, skill)
        turns = [(qa.question, qa.answer) for qa in qas]
        turns[0] = (f"{IMAGE_PLACEHOLDER}\n{turns[0][0]}", turns[0][1])
        answer = " | ".join(qa.short for qa in qas)
    conversations = []
    for question, reply in turns:
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": reply}]
    return WorldExample(
        f"{split}-{index:06d}",
        scene.render(the_scene),
        tuple(conversations),
        skill,
        answer,
        the_scene.to_json(),
    )


def iterate_split(spec: WorldSpec, split: str) -> Iterator[WorldExample]:
    for index in range(spec.split_size(split)):
        yield generate_example(spec, split, index)


def _scene(rng, spec: WorldSpec) -> scene.Scene:
    return scene.sample_scene(rng, spec.image_size, int(rng.integers(1, spec.max_objects + 1)))


def _scene_and_questions(rng, spec: WorldSpec, skill: str):
    for _ in range(100):
        the_scene = _scene(rng, spec)
        if skill == MULTI_TURN:
            qas = _multi_turn(rng, the_scene)
        else:
            qa = language.SINGLE_TURN_SKILLS[skill](rng, the_scene)
            qas = [qa] if qa is not None else None
        if qas:
            return the_scene, qas
    raise RuntimeError(f"no scene supported skill {skill!r} in 100 tries")


def _multi_turn(rng, the_scene: scene.Scene) -> list[language.QA] | None:
    names = [
        language.FOLLOW_UP_SKILLS[int(i)]
        for i in rng.choice(
            len(language.FOLLOW_UP_SKILLS), size=int(rng.integers(2, 4)), replace=False
        )
    ]
    qas = [language.SINGLE_TURN_SKILLS[name](rng, the_scene) for name in names]
    qas = [qa for qa in qas if qa is not None]
    return qas if len(qas) >= 2 else None
