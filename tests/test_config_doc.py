"""docs/config.md documents every key of every preset of configs/comd.py, and shows the default
preset's value (a stage section's keys: the value every stage starts from). A key added to a
preset without a row, a row left behind for a removed key, or a default changed without the
page fails here."""
import importlib.util
import os
import re
import sys

import pytest

from comd_jax import config as config_lib
from comd_jax.configs.comd import PRESETS as ALL_PRESETS
from comd_jax.distill.teacher_manifest import SHIPPED
from tests._paths import REPO

PAGE = os.path.join(REPO, "docs", "config.md")
PRESETS = tuple(sorted(ALL_PRESETS))
OPAQUE = ("ablation.variants",)  # a table of overrides, documented as one key


def _configs_module():
    spec = importlib.util.spec_from_file_location("comd_configs", config_lib.DEFAULT_CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flat(d: dict, prefix: str = ""):
    for key, value in d.items():
        name = prefix + key
        if isinstance(value, dict) and name not in OPAQUE:
            yield from _flat(value, name + ".")
        else:
            yield name, value


def _doc_key(name: str, stages: set) -> str:
    """A stage section's keys are documented once as <stage>.KEY, the teacher's as model.KEY."""
    head, _, rest = name.partition(".")
    if head in stages:
        return f"<stage>.{rest}"
    if head == "teacher" and rest:
        return f"model.{rest}"
    return name


def _shown(value) -> str:
    return "`the shipped teacher`" if value == SHIPPED else f"`{value!r}`"


def _rows() -> dict:
    rows = {}
    for line in open(PAGE).read().splitlines():
        m = re.match(r"^\| `([^`]+)` \| (.*?) \| (.*) \|$", line)
        if m:
            assert m.group(1) not in rows, f"docs/config.md: {m.group(1)} has two rows"
            assert m.group(3).strip(), f"docs/config.md: {m.group(1)} says nothing about what it does"
            rows[m.group(1)] = m.group(2).strip()
    return rows


def _keys():
    keys = {}
    for preset in PRESETS:
        config = config_lib.preset(preset).to_dict()
        stages = {k for k, v in config.items() if isinstance(v, dict) and "learning_rate" in v}
        for name, value in _flat(config):
            keys.setdefault(_doc_key(name, stages), {}).setdefault(preset, value)  # model before teacher
    return keys


def test_every_config_key_has_a_row_and_every_row_a_key():
    rows, keys = _rows(), _keys()
    missing = sorted(set(keys) - set(rows))
    assert not missing, f"docs/config.md has no row for {missing}"
    stale = sorted(set(rows) - set(keys))
    assert not stale, f"docs/config.md documents keys no preset has: {stale}"


def test_the_page_shows_the_default_presets_values():
    rows, keys = _rows(), _keys()
    stage = dict(_flat(_configs_module()._stage().to_dict()))
    for key, by_preset in keys.items():
        if key.startswith("<stage>."):
            want = _shown(stage[key.split(".", 1)[1]])
        elif "default" in by_preset:
            want = _shown(by_preset["default"])
        else:
            want = "—"  # only in other presets
        assert rows[key] == want, f"docs/config.md: {key} shows {rows[key]}, the config has {want}"


def test_a_key_without_a_row_is_caught(tmp_path, monkeypatch):
    page = tmp_path / "config.md"
    page.write_text("\n".join(line for line in open(PAGE).read().splitlines()
                              if not line.startswith("| `distill.threshold`")))
    monkeypatch.setattr(sys.modules[__name__], "PAGE", str(page))
    with pytest.raises(AssertionError, match="distill.threshold"):
        test_every_config_key_has_a_row_and_every_row_a_key()
