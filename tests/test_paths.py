"""Start-up path handling (comd_jax/paths.py) and all-or-nothing writes (comd_jax/atomic.py)."""
import os

import pytest
from ml_collections import ConfigDict

from comd_jax import atomic, paths


def test_absolute_resolves_local_paths_and_keeps_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.absolute("workdir") == str(tmp_path / "workdir")
    assert paths.absolute("./a/../b") == str(tmp_path / "b")
    assert paths.absolute("~/runs") == str(tmp_path / "home" / "runs")
    assert paths.absolute("/abs/x") == "/abs/x"
    for kept in ("gs://bucket/run", "s3://b/k", "", None):
        assert paths.absolute(kept) == kept


def test_startup_makes_config_paths_absolute_and_prints_the_workdir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = ConfigDict({"init_from": "ckpt/llava", "init_vision_from": "",
                         "distill": {"teacher_checkpoint": "gs://b/teacher"}, "data": {"path": "rel.json"}})
    config.lock()
    workdir = paths.startup(config, "workdir")
    assert workdir == str(tmp_path / "workdir")
    assert f"workdir: {tmp_path / 'workdir'}" in capsys.readouterr().out
    assert config.init_from == str(tmp_path / "ckpt" / "llava")
    assert config.init_vision_from == ""  # unset stays unset
    assert config.distill.teacher_checkpoint == "gs://b/teacher"
    assert config.data.path == "rel.json"  # only the fields Orbax or the cache may see
    assert paths.startup(config, "gs://b/run") == "gs://b/run"  # an object store's workdir, as written


def test_atomic_text_and_directory_leave_nothing_half_done(tmp_path):
    target = tmp_path / "a.json"
    atomic.write_text(str(target), "one")
    atomic.write_text(str(target), "two")
    assert target.read_text() == "two" and os.listdir(tmp_path) == ["a.json"]

    out = tmp_path / "tok"
    with pytest.raises(RuntimeError):
        with atomic.directory(str(out)) as tmp:
            open(os.path.join(tmp, "tokenizer.json"), "w").write("{}")
            raise RuntimeError("killed mid-build")
    assert not out.exists() and not (tmp_path / "tok.partial").exists()
    (tmp_path / "tok.partial").mkdir()  # as a SIGKILL leaves it: no except-block ran
    (tmp_path / "tok.partial" / "stale").write_text("x")
    with atomic.directory(str(out)) as tmp:
        open(os.path.join(tmp, "tokenizer.json"), "w").write("{}")
    assert sorted(os.listdir(out)) == ["tokenizer.json"]
    assert sorted(os.listdir(tmp_path)) == ["a.json", "tok"]
