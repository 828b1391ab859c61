"""A real two-process JAX job on CPU (jax.distributed over 127.0.0.1): the distillation
loop with stand-in components writes exactly what one process writes, only process 0
calls the teacher, judge and augmentor, and both processes end with the same state;
greedy decoding of a model sharded over both processes gives the single-device tokens.

Each process is a fresh interpreter (`python tests/test_multihost.py <id> <port> ...`),
because joining a job fixes jax's device list for the life of the process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

pytestmark = pytest.mark.e2e  # slow: the quick loop is pytest -m "not e2e"

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


class Counts(dict):
    def bump(self, key):
        self[key] = self.get(key, 0) + 1


def run_loop(workdir: str, counts: Counts) -> dict:
    """tests/distill/test_rounds.py's two-round loop, with every remote-side call counted; the
    student and the tuner check (collectively, when there are several processes) that all
    processes work on the same chunk and the same train.json."""
    from tests.distill import test_rounds as tr
    from jax.experimental import multihost_utils

    import jax
    from comd_jax.data.synthetic import world
    from comd_jax.distill import rounds
    from comd_jax.distill.augment import ProceduralAugmentor
    from comd_jax.distill.judges import ReferenceJudge
    from comd_jax.distill.selection import SelectionConfig

    def same_everywhere(text: str, what: str):
        if jax.process_count() > 1:
            multihost_utils.assert_equal(np.uint32(zlib.crc32(text.encode())), what)

    class Teacher(tr.Teacher):
        async def chat(self, messages, **params):
            counts.bump("teacher")
            return await super().chat(messages, **params)

    class Judge(ReferenceJudge):
        async def judge(self, question, teacher, student, images=(), *, reference, skill=None):
            counts.bump("judge")
            return await super().judge(question, teacher, student, images, reference=reference, skill=skill)

    class Augmentor(ProceduralAugmentor):
        async def propose(self, *args, **kwargs):
            counts.bump("propose")
            return await super().propose(*args, **kwargs)

    inner = tr.student_answers()

    def student(r, entries):  # collective in a real job: every process answers every chunk
        counts.bump("student_chunks")
        same_everywhere(f"{r}:" + ",".join(e.id for e in entries), "every process answers the same chunk")
        return inner(r, entries)

    def tune(r, path):
        counts.bump("tune")
        with open(path) as f:
            same_everywhere(f"{r}:" + f.read(), "every process tunes on the same train.json")

    def initial():
        counts.bump("initial_pool")
        return tr.initial_pool()

    parts = rounds.Components(
        teacher=Teacher(), judge=Judge(metric_for=lambda skill: "f1"),
        augmentor=Augmentor(world.WorldSpec(seed=9), os.path.join(workdir, "images"), seed=1),
        answer_student=student, tune=tune)
    cfg = rounds.DistillConfig(rounds=2, selection=SelectionConfig(threshold=1.0, easy_keep=0.25), seed=3)
    loop = rounds.Loop(cfg, workdir, parts)
    loop.seed_pool(initial)
    return loop.run()


def tiny_generate() -> dict:
    """Greedy tokens from a tiny decoder sharded (fsdp) over every device of the job, and from
    the same weights on this process's first device alone."""
    import jax

    from comd_jax import sharding as shd
    from comd_jax.models import build
    from comd_jax.models.config import DecoderConfig, VLMConfig
    from comd_jax.models.generate import greedy_generate

    cfg = VLMConfig(text=DecoderConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=1,
                                       num_heads=4, num_kv_heads=2, max_position_embeddings=64),
                    vision=None)
    rng = np.random.default_rng(1)
    ids = np.zeros((2, 12), np.int32)
    mask = np.zeros_like(ids)
    for b, n in enumerate((12, 7)):
        ids[b, :n], mask[b, :n] = rng.integers(3, 90, n), 1
    out = {}
    for name, devices in (("global", jax.devices()), ("local", jax.local_devices()[:1])):
        model = build.build_model(cfg, shd.make_mesh((1, -1, 1), devices), seed=3)
        out[name] = greedy_generate(model, ids, max_new_tokens=6, attention_mask=mask).tolist()
    return out


def target_index_shape() -> list:
    """The LM head's target index for a host-local batch whose rows have 8 targets on
    process 0 and 40 on process 1: every process must build the same global shape."""
    import jax

    from comd_jax.train import targets

    mask = np.zeros((2, 64), np.float32)
    mask[:, 64 - (8 if jax.process_index() == 0 else 40):] = 1
    return list(targets.target_index(mask).shape)


def files_under(root: str) -> dict:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(script: str, args_for, logdir: str, n: int = 2, timeout: float = 120) -> None:
    """Runs `python script <process id> <port> *args_for(process id)` for ids 0..n-1 as one
    jax.distributed job on CPU over 127.0.0.1 (one device per process), with tests/ and the
    repository on PYTHONPATH; fails with every process's log tail when one fails. The logs are
    written to `logdir` while the job runs and removed after."""
    codes, texts = launch(script, args_for, logdir, n, timeout)
    assert codes == [0] * n, "\n".join(
        f"process {i} exited {code}:\n{text[-4000:]}" for i, (code, text) in enumerate(zip(codes, texts)))


def launch(script: str, args_for, logdir: str, n: int = 2, timeout: float = 120,
           stop_at_first_failure: bool = True) -> tuple:
    """run_job's job: ([exit code per process], [log per process]); a process still running at
    the timeout is killed (its code is then negative)."""
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([REPO, HERE]),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    logs = [open(os.path.join(logdir, f"log{i}.txt"), "w+") for i in range(n)]
    procs = [subprocess.Popen([sys.executable, script, str(i), str(port), *args_for(i)],
                              env=env, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(n)]
    # A process that fails leaves the others waiting in a collective: stop all at the first failure.
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and not (stop_at_first_failure and any(p.poll() for p in procs)) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
        os.remove(log.name)
    return [p.returncode for p in procs], texts


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """(single-process reference, [process 0's report, process 1's report], the shared workdir)."""
    reference_dir = str(tmp_path_factory.mktemp("single"))
    counts = Counts()
    reference = {"state": run_loop(reference_dir, counts), "counts": counts, "dir": reference_dir}

    shared = str(tmp_path_factory.mktemp("shared"))
    run_job(__file__, lambda i: [shared, os.path.join(shared, f"report{i}.json")], logdir=shared)
    reports = []
    for i in range(2):
        with open(os.path.join(shared, f"report{i}.json")) as f:
            reports.append(json.load(f))
        os.remove(os.path.join(shared, f"report{i}.json"))
    return reference, reports, shared


def test_two_processes_write_what_one_process_writes(job):
    reference, (p0, p1), shared = job
    assert (p0["process"], p1["process"]) == ([0, 2], [1, 2])
    want, got = files_under(reference["dir"]), files_under(shared)
    assert sorted(got) == sorted(want)  # the same files (pools, JSONL, selections, images, state) ...
    assert [name for name in want if got[name] != want[name]] == []  # ... byte for byte
    for name in ("train_pool.jsonl", "round0_assess.jsonl", "round1_assess.jsonl", "round0_augment.jsonl"):
        ids = [json.loads(line)["id"] for line in open(os.path.join(shared, "distill", name))]
        assert ids and len(ids) == len(set(ids)), name  # no line written twice


def test_only_process_0_talks_to_the_teacher_and_both_end_in_the_same_state(job):
    reference, (p0, p1), _ = job
    remote = ("teacher", "judge", "propose", "initial_pool")
    assert {k: p0["counts"].get(k, 0) for k in remote} == {k: reference["counts"][k] for k in remote}
    assert all(reference["counts"][k] > 0 for k in remote)
    assert {k: p1["counts"].get(k, 0) for k in remote} == dict.fromkeys(remote, 0)
    # The collective parts ran everywhere, chunk for chunk.
    for k in ("student_chunks", "tune"):
        assert p0["counts"][k] == p1["counts"][k] == reference["counts"][k]
    assert p0["state"] == p1["state"] == reference["state"]


def test_greedy_decoding_of_a_model_spanning_both_processes(job):
    _, (p0, p1), _ = job
    assert p0["generate"]["global"] == p0["generate"]["local"] == p1["generate"]["global"]
    assert len(p0["generate"]["global"]) == 2 and len(p0["generate"]["global"][0]) == 6


def test_processes_agree_on_the_lm_heads_target_index_width(job):
    _, (p0, p1), _ = job
    assert p0["target_index"] == p1["target_index"] == [2, 40]  # process 0 alone would pick 8


@pytest.mark.parametrize("where", ["judge", "augmentor", "endpoint", "judge_url", "world"])
def test_a_failure_on_process_0_stops_both_processes_with_its_message(tmp_path, where):
    """The judge (inside the assessment's chunk loop), the augmentor (a phase only process 0
    runs), the teacher's or the judge's URL (checked by process 0 at start-up) or the offline
    world's build (process 0's, in the workdir) fails on process 0: process 1
    must not wait in a barrier until the coordination service gives up, but exit at once with
    process 0's error; the loop records nothing of the failed phase as done."""
    codes, texts = launch(__file__, lambda i: ["--fail", where, str(tmp_path), os.devnull], logdir=str(tmp_path),
                          timeout=90, stop_at_first_failure=False)
    assert all(code > 0 for code in codes), (codes, [t[-3000:] for t in texts])  # exited, none killed
    message = "does not answer" if where in ("endpoint", "judge_url") else f"{where} is down"
    assert message in texts[0]
    assert "process 0 failed before the barrier" in texts[1] and message in texts[1]
    if where in ("judge", "augmentor"):
        with open(os.path.join(tmp_path, "distill", "state.json")) as f:
            state = json.load(f)
        assert (state["round"], state["phase"]) == (0, "assess" if where == "judge" else "augment")


def failing_loop(workdir: str, where: str) -> None:
    """run_loop's loop with process 0's judge or augmentor failing in round 0, the CoMD run's
    teacher endpoint or judge a URL where nothing listens, or process 0's world build failing."""
    if where == "world":
        import jax
        from comd_jax import stages
        from comd_jax.data.synthetic import prepare

        def down(*args, **kwargs):
            raise OSError("world is down")

        if jax.process_index() == 0:
            prepare.prepare_world = down
        stages.prepare_world_once(os.path.join(workdir, "world"), None, None, vocab_size=64, in_workdir=True)
        return
    if where == "judge_url":
        from comd_jax.configs.comd import get_config
        from comd_jax.distill.driver import _judge_client

        config = get_config("smoke")
        config.distill.judge_url = f"http://127.0.0.1:{free_port()}/v1"
        _judge_client(config, None)
        return
    if where == "endpoint":
        from comd_jax.configs.comd import get_config
        from comd_jax.distill.endpoint import TeacherEndpoint

        config = get_config("smoke")
        config.distill.teacher_url = f"http://127.0.0.1:{free_port()}/v1"
        with TeacherEndpoint(config, workdir, "", server_cls=None):
            return
    from comd_jax.distill.augment import ProceduralAugmentor
    from comd_jax.distill.judges import ReferenceJudge

    def down(*args, **kwargs):
        raise ConnectionError(f"{where} is down")

    patch = {"judge": (ReferenceJudge, "judge"), "augmentor": (ProceduralAugmentor, "propose")}[where]
    original = getattr(*patch)

    async def failing(self, *args, **kwargs):
        down()
        return await original(self, *args, **kwargs)

    setattr(*patch, failing)
    run_loop(workdir, Counts())


def test_rounds_refuse_an_object_store_workdir():
    from comd_jax.distill import rounds

    parts = rounds.Components(teacher=None, judge=None, augmentor=None, answer_student=None, tune=None)
    with pytest.raises(ValueError, match="gcsfuse"):
        rounds.Loop(rounds.DistillConfig(rounds=1), "gs://bucket/run", parts)


def main(process_id: int, port: int, workdir: str, report: str):
    import jax

    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    counts = Counts()
    state = run_loop(workdir, counts)
    result = {"process": [jax.process_index(), jax.process_count()], "state": state, "counts": counts,
              "generate": tiny_generate(), "target_index": target_index_shape()}
    with open(report, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    if sys.argv[3] == "--fail":  # <id> <port> --fail <where> <workdir> <unused>
        import jax

        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{sys.argv[2]}", num_processes=2,
                                   process_id=int(sys.argv[1]))
        failing_loop(sys.argv[5], sys.argv[4])
    else:
        main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
