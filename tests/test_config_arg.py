"""`--config=configs/comd.py:smoke` names the package's presets from any directory, and a
user's own config file is read as given."""
import os

from comd_jax import configs
from comd_jax.cli import config_arg


def test_the_readme_spelling_finds_the_packaged_presets_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["prog", "--config=configs/comd.py:smoke", "--config.distill.rounds=2", "--workdir=w"]
    assert config_arg.resolve(argv) == ["prog", f"--config={configs.COMD}:smoke", "--config.distill.rounds=2",
                                        "--workdir=w"]
    assert config_arg.resolve(["prog", "--config", "comd.py"]) == ["prog", "--config", configs.COMD]
    assert config_arg.resolve(["--config=configs/snapshot.py:/run/config.json"]) == \
        [f"--config={configs.SNAPSHOT}:/run/config.json"]


def test_a_file_that_exists_wins_and_other_names_are_left_for_absl_to_refuse(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir("configs")
    with open("configs/comd.py", "w") as f:
        f.write("def get_config(arg=None):\n    return None\n")
    assert config_arg.resolve(["--config=configs/comd.py:smoke"]) == ["--config=configs/comd.py:smoke"]
    for missing in ("mine/comd.py:smoke", "configs/nope.py", "configs/__init__.py.txt"):
        assert config_arg.resolve([f"--config={missing}"]) == [f"--config={missing}"]
