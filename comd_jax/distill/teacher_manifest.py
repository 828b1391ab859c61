"""A world teacher's manifest, `world_teacher.json`: every file's sha256 and the world the
teacher was trained on. Read by every run that loads such a teacher (the shipped one by
default), so it imports nothing of the package: `world_teacher` builds and scores, this checks.

- `verify(directory)` checks every file against the manifest and returns the manifest.
- `check_world(manifest, config, tokenizer_dir)` refuses a run whose world is not the
  teacher's: a different tokenizer would silently mis-tokenize every prompt the teacher sees.
"""
from __future__ import annotations

import hashlib
import json
import os

MANIFEST = "world_teacher.json"
SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "world_teacher")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def world_of(config, tokenizer_dir: str) -> dict:
    """What a teacher's prompts depend on: the world's seed and image size, the patch size, and
    the exact tokenizer."""
    d, vision = config.data, config.teacher.vision
    return {"world_seed": d.world_seed, "image_size": d.image_size, "patch_size": vision.patch_size,
            "image_token_id": config.teacher.image_token_id,
            "tokenizer_sha256": sha256_of(os.path.join(tokenizer_dir, "tokenizer.json"))}


def verify(directory: str = SHIPPED) -> dict:
    """The manifest, once every file it lists is there with its sha256 (an error names the file)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory}: no {MANIFEST}; not an exported world teacher")
    with open(path) as f:
        manifest = json.load(f)
    for name, want in manifest["files"].items():
        file = os.path.join(directory, name)
        if not os.path.exists(file):
            raise FileNotFoundError(f"{file}: missing from the world teacher ({MANIFEST} lists it)")
        got = sha256_of(file)
        if got != want:
            raise ValueError(f"{file}: sha256 {got} is not the {want} that {MANIFEST} records; the file "
                             "changed (a partial copy, a Git LFS pointer, an edit): restore it or rebuild "
                             "the teacher with configs/comd.py:teacher")
    return manifest


def check_world(manifest: dict, config, tokenizer_dir: str, where: str = "config.distill.teacher_checkpoint"):
    """Refuses, naming each field, a run whose world the teacher was not trained on."""
    ours, theirs = world_of(config, tokenizer_dir), manifest["world"]
    wrong = [f"{k}: the teacher's {theirs[k]!r}, this run's {ours[k]!r}" for k in theirs if ours.get(k) != theirs[k]]
    if wrong:
        raise ValueError(f"{where}: this teacher was trained on another world ({'; '.join(wrong)}). Use the "
                         "world it was trained on (configs/comd.py's default data), or rebuild it with "
                         "configs/comd.py:teacher")
