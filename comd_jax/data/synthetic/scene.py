"""Scenes of flat shapes: sampling from a seeded generator and exact rendering.

Rendering is plain NumPy on pixel centres with a fixed palette and no
anti-aliasing, so every pixel is either background or exactly one object's
colour: the image can be parsed back into objects (tests do that), and the
same scene always gives the same bytes.

Guarantees that keep every question answerable from pixels: objects of the
same colour never touch (so counting by colour is counting blobs), every
object keeps at least `MIN_VISIBLE` of its area, and (colour, shape) pairs
are unique within a scene (so "the red circle" names one object).
"""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np

PALETTE = types.MappingProxyType(
    {
        "red": (220, 40, 40),
        "green": (40, 170, 60),
        "blue": (40, 80, 220),
        "yellow": (235, 200, 30),
        "purple": (140, 60, 180),
        "orange": (245, 130, 20),
    }
)
BACKGROUND = (245, 245, 245)
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
MIN_VISIBLE = 0.6
# Radius as a fraction of the image side; "large" is clearly bigger than "small".
_RADIUS = {"small": 0.11, "large": 0.19}
# Every shape fits in a circle of this many radii (the triangle's base corners
# reach 1.28 r, the square's corners 1.2 r).
_EXTENT = 1.3


@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    x: float  # centre, in pixels
    y: float
    radius: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclasses.dataclass(frozen=True)
class Scene:
    image_size: int
    objects: tuple[SceneObject, ...]  # in drawing order (later ones on top)

    def to_json(self) -> str:
        return json.dumps(
            {
                "image_size": self.image_size,
                "objects": [dataclasses.asdict(o) for o in self.objects],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> "Scene":
        data = json.loads(text)
        return cls(data["image_size"], tuple(SceneObject(**o) for o in data["objects"]))


def shape_mask(obj: SceneObject, image_size: int) -> np.ndarray:
    """bool [S, S]: the pixels whose centres fall inside the object."""
    coords = np.arange(image_size, dtype=np.float64) + 0.5
    dx = coords[None, :] - obj.x
    dy = coords[:, None] - obj.y
    r = obj.radius
    if obj.shape == "circle":
        return dx * dx + dy * dy <= r * r
    if obj.shape == "square":
        half = 0.85 * r
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if obj.shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if obj.shape == "triangle":  # apex up, base at the bottom
        top, bottom = -r, 0.8 * r
        rows_in = (dy >= top) & (dy <= bottom)
        half_width = (dy - top) / (bottom - top) * r
        return rows_in & (np.abs(dx) <= half_width)
    raise ValueError(f"unknown shape {obj.shape!r}")


def object_ids(scene: Scene) -> np.ndarray:
    """int [S, S]: index of the visible object at each pixel, -1 for background."""
    ids = np.full((scene.image_size, scene.image_size), -1, np.int32)
    for i, obj in enumerate(scene.objects):
        ids[shape_mask(obj, scene.image_size)] = i
    return ids


def render(scene: Scene) -> np.ndarray:
    """uint8 [S, S, 3]."""
    colours = np.array([PALETTE[o.colour] for o in scene.objects] + [BACKGROUND], np.uint8)
    return colours[object_ids(scene)]  # -1 picks the background row


def sample_scene(
    rng: np.random.Generator,
    image_size: int,
    num_objects: int,
    *,
    colours: tuple[str, ...] = tuple(PALETTE),
    shapes: tuple[str, ...] = SHAPES,
    max_attempts: int = 200,
) -> Scene:
    """A random scene satisfying the module's guarantees (retries are seeded too)."""
    for _ in range(max_attempts):
        objects: list[SceneObject] = []
        for _ in range(num_objects):
            obj = _place(rng, image_size, objects, colours, shapes)
            if obj is None:
                break
            objects.append(obj)
        if len(objects) == num_objects and _all_visible(Scene(image_size, tuple(objects))):
            return Scene(image_size, tuple(objects))
    raise RuntimeError(f"could not place {num_objects} objects in {image_size}px")


def _place(rng, image_size, placed, colours, shapes) -> SceneObject | None:
    taken = {(o.colour, o.shape) for o in placed}
    for _ in range(50):
        colour, shape = str(rng.choice(colours)), str(rng.choice(shapes))
        if (colour, shape) in taken:
            continue
        size = str(rng.choice(SIZES))
        radius = max(3.0, _RADIUS[size] * image_size)
        margin = _EXTENT * radius + 1  # whole shape inside the frame
        x, y = rng.uniform(margin, image_size - margin, size=2)
        candidate = SceneObject(shape, colour, size, round(float(x), 2), round(float(y), 2), radius)
        if all(_compatible(candidate, o) for o in placed):
            return candidate
    return None


def _compatible(a: SceneObject, b: SceneObject) -> bool:
    distance = np.hypot(a.x - b.x, a.y - b.y)
    if a.colour == b.colour:  # must not touch, or two blobs merge into one
        return distance > _EXTENT * (a.radius + b.radius) + 2
    return distance > 0.9 * max(a.radius, b.radius)  # overlap, but not stacked


def _all_visible(scene: Scene) -> bool:
    ids = object_ids(scene)
    for i, obj in enumerate(scene.objects):
        area = shape_mask(obj, scene.image_size).sum()
        visible = ids == i
        if area == 0 or visible.sum() < MIN_VISIBLE * area or not _connected(visible):
            return False
    return True


def _connected(mask: np.ndarray) -> bool:
    """Whether the True pixels form one 4-connected blob (occluders must not split one)."""
    ys, xs = np.nonzero(mask)
    reached = np.zeros_like(mask)
    reached[ys[0], xs[0]] = True
    while True:
        grown = reached.copy()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= mask
        if (grown == reached).all():
            return bool((reached == mask).all())
        reached = grown
