"""The teacher the rounds talk to: `distill.teacher_url` (any OpenAI-compatible server),
or our server started as its own process on a teacher checkpoint."""
from __future__ import annotations

import json
import logging
import os

from comd_jax import atomic, configs, multihost
from comd_jax.serve.client import openai_base  # noqa: F401 (the driver's import)


def _flat(d, prefix=""):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


# Read by the ablation's driver, never by the run itself (its seed and overrides are already
# laid into the run's own keys).
NOT_THE_RUNS = ("ablation.",)


def changed(saved: dict, current: dict) -> list:
    """[(key, saved value, current value)] for every setting of the run that differs, by key."""
    old, new = dict(_flat(saved)), dict(_flat(current))
    return [(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k) and not k.startswith(NOT_THE_RUNS)]


def snapshot(config, workdir: str) -> str:
    """The run's config as WORKDIR/config.json, and the --config argument that loads it back.

    A workdir resumes whatever its config: a rerun with other settings keeps every phase, round
    and evaluation already finished there, as it was computed. So a changed setting is logged,
    by key, with its old and new value: a user who changed `distill.kd` and kept the workdir
    learns that the finished rounds are the old ones."""
    path = os.path.join(workdir, "config.json")
    if multihost.is_writer():
        text = config.to_json(indent=2)
        if os.path.exists(path):
            with open(path) as f:
                diff = changed(json.load(f), json.loads(text))
            if diff:
                logging.warning(
                    "%s: this run's config differs from the one this workdir ran with, in %s. What is already "
                    "finished here (stages, rounds, evaluations) is kept as it was computed, under the old "
                    "values; only what is not finished runs under the new ones. Use a new --workdir to "
                    "recompute everything.", path,
                    "; ".join(f"{k} ({old!r} -> {new!r})" for k, old, new in diff))
        atomic.write_text(path, text)  # the teacher server reads it back
    return f"{configs.SNAPSHOT}:{path}"


def api_key(config, field: str) -> str:
    """The key in the environment variable `config.distill.<field>` names ("" when unset). Keys live
    only in the environment, so no config snapshot, log or report can hold one."""
    name = getattr(config.distill, field)
    return os.environ.get(name, "") if name else ""


def check_answers(url: str, field: str, api_key: str = "", timeout_s: float = 10.0) -> None:
    """Refuses, by name, an endpoint that does not answer at all (no server, wrong host or port).
    Any HTTP answer, even 401 or 404, means something is there; the requests say the rest."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url + "/models", headers={"Authorization": f"Bearer {api_key}"} if api_key
                                     else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as e:
        raise ConnectionError(f"config.distill.{field}={url!r} does not answer ({url}/models: "
                              f"{getattr(e, 'reason', e)}); start the server or fix the URL") from None


class TeacherEndpoint:
    """`with TeacherEndpoint(config, workdir, checkpoint, ServerProcess) as base_url:`.

    Only process 0 talks to the teacher, so only process 0 starts the server; the others get
    an empty URL they never use."""

    def __init__(self, config, workdir: str, checkpoint: str, server_cls):
        self.url = config.distill.teacher_url
        if not self.url and not checkpoint:
            raise ValueError("the CoMD rounds need a teacher: set config.distill.teacher_url (an OpenAI-compatible "
                             "base URL) or config.distill.teacher_checkpoint (served by python -m comd_jax.serve)")
        self.key = api_key(config, "teacher_api_key_env")
        self.server = None if self.url or not multihost.is_writer() else server_cls(
            snapshot(config, workdir), workdir=workdir, checkpoint=checkpoint,
            model_name=config.distill.teacher_model, api_key=self.key or None)

    def __enter__(self) -> str:
        # an endpoint that does not answer, or a server that does not start, stops every process
        with multihost.writing("comd_jax.distill: the teacher endpoint is up"):
            if self.server is not None:
                self.server.start()
            elif self.url and multihost.is_writer():
                self.url = openai_base(self.url)
                check_answers(self.url, "teacher_url", self.key)
        return self.url if self.server is None else self.server.base_url

    def __exit__(self, *exc):
        if self.server is not None:
            self.server.stop()
