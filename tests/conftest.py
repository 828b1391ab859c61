"""Fixtures shared across the test tree. Each folder mirrors a package of comd_jax
(tests/models, tests/train, ..., tests/e2e); tests/data/conftest.py holds the data ones."""
import json
import os
import shutil
import tempfile

import pytest

from tests._paths import CACHE_ENV


def pytest_configure(config):
    if not hasattr(config, "workerinput") and not os.environ.get(CACHE_ENV):  # the controller, once
        os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="comd_test_compilation_cache_")
        config._comd_cache = os.environ[CACHE_ENV]


def pytest_collection_modifyitems(config, items):
    # The end-to-end files first: each is minutes in one worker, so they start at once and the
    # many short tests fill the other workers around them, instead of one of them ending alone.
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


def pytest_unconfigure(config):
    if getattr(config, "_comd_cache", None):
        shutil.rmtree(config._comd_cache, ignore_errors=True)


def _save(model_section, seed, out, world_dir):
    from comd_jax.configs import comd
    from comd_jax import config as config_lib
    from comd_jax.convert.hf import save_pretrained
    from comd_jax.models import build

    save_pretrained(build.build_model(config_lib.model_config(comd.get_config("smoke")[model_section]), seed=seed),
                    str(out))
    for name in os.listdir(world_dir / "tokenizer"):  # a checkpoint directory as transformers writes it
        shutil.copy(world_dir / "tokenizer" / name, out / name)
    shutil.copy(world_dir / "image_processor" / "preprocessor_config.json", out)


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A user's files: transformers student and teacher directories (tokenizer and image processor
    inside), a LLaVA JSONL pool with integer ids, JPEGs in nested folders, a multi-turn, a
    text-only and a broken sample."""
    from PIL import Image

    from comd_jax.data.synthetic import prepare, world

    root = tmp_path_factory.mktemp("user")
    wd = root / "made_by_world"
    prepare.prepare_world(str(wd), world.WorldSpec(seed=5, num_captions=32, num_instructions=24, num_heldout=8))
    for name, seed in (("student", 1), ("teacher", 2)):
        (root / name).mkdir()
        _save("model" if name == "student" else "teacher", seed, root / name, wd)
    llava = wd / "llava"
    samples = json.load(open(llava / "instructions.json"))
    pool = []
    for k, s in enumerate(samples[:10]):  # JPEGs in nested folders, integer ids
        rel = f"scenes/part{k % 2}/{k}.jpg"
        os.makedirs(root / "images" / os.path.dirname(rel), exist_ok=True)
        Image.open(llava / s["image"]).convert("RGB").save(root / "images" / rel, quality=95)
        pool.append({"id": 1000 + k, "image": rel, "conversations": s["conversations"][:2]})
    pool.append({"id": 2000, "image": "scenes/part0/0.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhich colour is it?"}, {"from": "gpt", "value": "Blue."},
        {"from": "human", "value": "How many are there?"}, {"from": "gpt", "value": "3"}]})
    pool.append({"id": 2001, "conversations": [{"from": "human", "value": "Name a colour."},
                                               {"from": "gpt", "value": "red"}]})
    pool.append({"id": 2002, "image": "scenes/missing.jpg", "conversations": samples[11]["conversations"][:2]})
    with open(root / "pool.jsonl", "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in pool)
    return root
