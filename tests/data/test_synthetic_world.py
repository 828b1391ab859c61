"""The offline world: deterministic bytes, tagged skills, answers readable from pixels."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from comd_jax.data.synthetic import language, scene, world
from tests._paths import REPO

SPEC = world.WorldSpec(seed=3, num_captions=24, num_instructions=90, num_heldout=18)


def export_digest(hash_seed: str, out_dir: str) -> str:
    """Exports in a fresh interpreter (own hash randomization) and hashes every file."""
    code = (
        "import hashlib, os, sys\n"
        "from comd_jax.data.synthetic import export, world\n"
        f"spec = world.WorldSpec(seed=3, num_captions=6, num_instructions=18, num_heldout=4)\n"
        "export.export_llava(spec, sys.argv[1])\n"
        "h = hashlib.sha256()\n"
        "for root, _, files in sorted(os.walk(sys.argv[1])):\n"
        "    for name in sorted(files):\n"
        "        p = os.path.join(root, name); h.update(p[len(sys.argv[1]):].encode())\n"
        "        h.update(open(p, 'rb').read())\n"
        "print(h.hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", code, out_dir], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_same_seed_same_bytes_across_processes(tmp_path):
    assert export_digest("1", str(tmp_path / "a")) == export_digest("2", str(tmp_path / "b"))


def test_different_seed_different_world():
    a = world.generate_example(SPEC, world.INSTRUCTIONS, 0)
    b = world.generate_example(world.WorldSpec(seed=4), world.INSTRUCTIONS, 0)
    assert a.png != b.png or a.conversations != b.conversations


def test_splits_are_disjoint_streams():
    pngs = {
        split: {world.generate_example(SPEC, split, i).png for i in range(10)}
        for split in world.SPLITS
    }
    assert not pngs[world.INSTRUCTIONS] & pngs[world.HELDOUT]


def test_tfds_dataset_matches_generator_and_export(tiny_world_tfds, tmp_path):
    from comd_jax.data.synthetic import builder, export

    paths = export.export_llava(SPEC, str(tmp_path), splits=(world.HELDOUT,))
    exported = {r["id"]: r for r in json.load(open(paths[world.HELDOUT]))}
    stored = list(builder.decoded_examples(tiny_world_tfds, world.HELDOUT))
    assert len(stored) == SPEC.num_heldout == len(exported)
    for record in stored:
        index = int(record["id"].split("-")[1])
        expected = world.generate_example(SPEC, world.HELDOUT, index)
        np.testing.assert_array_equal(record["image"], expected.image)
        assert record["conversations"] == list(expected.conversations)
        assert (record["skill"], record["answer"], record["scene"]) == (
            expected.skill,
            expected.answer,
            expected.scene,
        )
        assert exported[record["id"]]["conversations"] == record["conversations"]
        with open(os.path.join(str(tmp_path), exported[record["id"]]["image"]), "rb") as f:
            assert f.read() == expected.png


def test_every_skill_is_tagged_and_present():
    skills = collections.Counter(
        world.generate_example(SPEC, world.INSTRUCTIONS, i).skill for i in range(90)
    )
    assert set(skills) == set(world.SKILLS)
    assert {world.generate_example(SPEC, world.CAPTIONS, i).skill for i in range(5)} == {"caption"}


# ---- Reading the answer back from the pixels -------------------------------------------


def blobs(image: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """4-connected components of each palette colour: (colour, bool mask) per blob."""
    found = []
    for name, rgb in scene.PALETTE.items():
        todo = (image == np.array(rgb, np.uint8)).all(-1)
        while todo.any():
            start = tuple(np.argwhere(todo)[0])
            mask = np.zeros_like(todo)
            stack = [start]
            while stack:
                y, x = stack.pop()
                if 0 <= y < todo.shape[0] and 0 <= x < todo.shape[1] and todo[y, x]:
                    todo[y, x] = False
                    mask[y, x] = True
                    stack += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]
            found.append((name, mask))
    return found


def test_pixels_hold_exactly_the_scene_objects():
    for i in range(60):
        example = world.generate_example(SPEC, world.INSTRUCTIONS, i)
        objects = scene.Scene.from_json(example.scene).objects
        found = blobs(example.image)
        colours = collections.Counter(c for c, _ in found)
        assert colours == collections.Counter(o.colour for o in objects), example.id
        background = (example.image == np.array(scene.BACKGROUND, np.uint8)).all(-1)
        assert background.sum() + sum(m.sum() for _, m in found) == example.image[..., 0].size
        for obj in objects:  # each object's own blob sits around its centre
            own = [m for c, m in found if c == obj.colour]
            centres = [np.argwhere(m).mean(0)[::-1] + 0.5 for m in own]
            nearest = min(np.hypot(*(c - (obj.x, obj.y))) for c in centres)
            assert nearest < obj.radius, (example.id, obj)


def solve(question: str, image: np.ndarray, objects) -> str:
    """An independent reader: counting and colours from pixels, the rest from the scene."""
    found = blobs(image)
    by_name = {o.name: o for o in objects}
    if m := re.match(r"How many (\w+) objects are there\?", question):
        return str(sum(c == m[1] for c, _ in found))
    if re.match(r"(How many objects|How many shapes|Count the objects)", question):
        return str(len(found))
    if m := re.match(r"How many (\w+)s are there\?", question):
        return str(sum(o.shape == m[1] for o in objects))
    if m := re.search(r"colour (?:is|of|does) the (\w+)", question):
        return next(o.colour for o in objects if o.shape == m[1])
    if m := re.match(
        r"(?:What shape is the|What is the shape of the|Which shape is) (\w+)", question
    ):
        return next(o.shape for o in objects if o.colour == m[1])
    if m := re.match(r"(?:Is there|Does the picture contain|Can you see) a (\w+ \w+)", question):
        return "yes" if m[1] in by_name else "no"
    if m := re.match(r"Is the (\w+ \w+) to the \w+ or to the \w+ of the (\w+ \w+)\?", question):
        return "left" if by_name[m[1]].x < by_name[m[2]].x else "right"
    if m := re.match(r"Is the (\w+ \w+) \w+ or \w+ the (\w+ \w+)\?", question):
        return "above" if by_name[m[1]].y < by_name[m[2]].y else "below"
    if m := re.match(r"Which is (larger|smaller), the (\w+ \w+) or the (\w+ \w+)\?", question):
        a, b = by_name[m[2]], by_name[m[3]]
        return (a if (a.radius > b.radius) == (m[1] == "larger") else b).name
    if m := re.match(r"Are there more (\w+) objects or (\w+) objects\?", question):
        n1, n2 = (sum(c == colour for c, _ in found) for colour in (m[1], m[2]))
        return m[1] if n1 > n2 else m[2]
    raise AssertionError(f"unreadable question {question!r}")


def test_answers_are_recomputable_from_image_and_scene():
    checked = collections.Counter()
    for split in (world.INSTRUCTIONS, world.HELDOUT):
        for i in range(SPEC.split_size(split)):
            example = world.generate_example(SPEC, split, i)
            objects = scene.Scene.from_json(example.scene).objects
            questions = [t["value"].removeprefix("<image>\n") for t in example.conversations[::2]]
            answers = example.answer.split(" | ")
            if example.skill == "detailed_description":
                text = example.conversations[1]["value"]
                assert all(f"{o.size} {o.name}" in text for o in objects)
                continue
            for question, answer in zip(questions, answers):
                if example.skill == "multiple_choice":
                    lines = question.split("\n")
                    options = {l[0]: l[3:] for l in lines[1:-1]}
                    assert lines[-1] == language.MC_INSTRUCTION
                    assert solve(lines[0], example.image, objects) == options[answer]
                else:
                    assert solve(question, example.image, objects) == answer, example.id
            checked[example.skill] += 1
    assert set(checked) == set(world.SKILLS) - {"detailed_description"}


def test_answers_are_not_guessable_without_the_image():
    answers = collections.defaultdict(list)
    for i in range(400):
        example = world.generate_example(SPEC, world.INSTRUCTIONS, i)
        answers[example.skill].append(example.answer)
    for skill in (
        "colour",
        "shape",
        "existence",
        "counting",
        "spatial_relation",
        "multiple_choice",
    ):
        most_common = collections.Counter(answers[skill]).most_common(1)[0][1]
        assert most_common / len(answers[skill]) < 0.65, (
            skill,
            collections.Counter(answers[skill]),
        )


def test_world_tokenizer_loads_with_auto_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from comd_jax.data.synthetic.tokenizer import build_world_tokenizer

    path = build_world_tokenizer(SPEC, str(tmp_path / "tok"), vocab_size=600)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert [
        tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<pad>", "<image>")
    ] == [0, 1, 2, 3, 4]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<s>",
        "</s>",
        "<pad>",
    )
    assert len(tokenizer) <= 600
    text = world.generate_example(SPEC, world.HELDOUT, 1).conversations[1]["value"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level: lossless
    assert len(ids) < len(text) / 2  # words, not characters
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nHi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("USER: <image>\nHi ASSISTANT:") and prompt.startswith("<s>A chat")


def test_prepared_folder_grows_with_the_sizes_but_refuses_another_world(tmp_path):
    """A workdir's world keeps its LLaVA export in step with the spec: bigger splits re-export
    (the first examples unchanged, the tokenizer kept for the checkpoints that use its ids);
    a different world is refused by name rather than mixing one world's files with another's."""
    from comd_jax.data.synthetic import prepare

    out = str(tmp_path / "world")
    small = world.WorldSpec(seed=3, num_captions=4, num_instructions=6, num_heldout=3)
    files = prepare.prepare_world(out, small, vocab_size=600)
    tokenizer_bytes = open(os.path.join(files.tokenizer_dir, "tokenizer.json"), "rb").read()
    first = json.load(open(files.llava_json[world.INSTRUCTIONS]))
    assert len(first) == 6

    grown = world.WorldSpec(seed=3, num_captions=4, num_instructions=9, num_heldout=3)
    files = prepare.prepare_world(out, grown, vocab_size=600)
    now = json.load(open(files.llava_json[world.INSTRUCTIONS]))
    assert len(now) == 9 and now[:6] == first
    assert open(os.path.join(files.tokenizer_dir, "tokenizer.json"), "rb").read() == tokenizer_bytes
    assert json.load(open(os.path.join(out, prepare.SPEC_FILE)))["num_instructions"] == 9

    other = world.WorldSpec(seed=3, num_captions=4, num_instructions=9, num_heldout=3, max_objects=2)
    with pytest.raises(ValueError, match=r"max_objects=5 .*asks for max_objects=2.*another --workdir"):
        prepare.prepare_world(out, other, vocab_size=600)
    with pytest.raises(ValueError, match=r"vocab_size=600 .*vocab_size=512"):
        prepare.prepare_world(out, grown, vocab_size=512)
    assert len(json.load(open(files.llava_json[world.INSTRUCTIONS]))) == 9  # nothing was touched
