"""The shipped world teacher's manifest: every file's sha256 is checked on load, and a run
whose world is not the teacher's is refused by field."""
import json
import os

import ml_collections
import pytest

from comd_jax.distill import world_teacher as wt


def _teacher_dir(tmp_path, tokenizer_text="{}"):
    d = tmp_path / "teacher"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"weights" * 100)
    (d / "tokenizer.json").write_text(tokenizer_text)
    files = {n: wt.sha256_of(str(d / n)) for n in ("model.safetensors", "tokenizer.json")}
    world = {"world_seed": 0, "image_size": 32, "patch_size": 4, "image_token_id": 4,
             "tokenizer_sha256": files["tokenizer.json"]}
    (d / wt.MANIFEST).write_text(json.dumps({"world": world, "files": files}))
    return d


def _config(seed=0, patch=4):
    return ml_collections.ConfigDict({"data": {"world_seed": seed, "image_size": 32},
                                      "teacher": {"image_token_id": 4, "vision": {"patch_size": patch}}})


def test_verify_passes_intact_files_and_names_a_changed_or_missing_one(tmp_path):
    d = _teacher_dir(tmp_path)
    assert wt.verify(str(d))["world"]["patch_size"] == 4
    (d / "model.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 .* is not the"):
        wt.verify(str(d))
    os.remove(d / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors: missing"):
        wt.verify(str(d))
    with pytest.raises(FileNotFoundError, match="not an exported world teacher"):
        wt.verify(str(tmp_path))


def test_check_world_refuses_another_world_by_field(tmp_path):
    d = _teacher_dir(tmp_path)
    manifest = wt.verify(str(d))
    wt.check_world(manifest, _config(), str(d))  # the teacher's own world
    with pytest.raises(ValueError, match=r"world_seed: the teacher's 0, this run's 3.*patch_size: the teacher's 4, "
                                         r"this run's 8"):
        wt.check_world(manifest, _config(seed=3, patch=8), str(d))
    other = tmp_path / "other"
    other.mkdir()
    (other / "tokenizer.json").write_text('{"model": "another"}')
    with pytest.raises(ValueError, match="tokenizer_sha256"):
        wt.check_world(manifest, _config(), str(other))
