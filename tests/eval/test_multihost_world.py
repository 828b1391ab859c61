"""The offline world in a real two-process JAX job on CPU (tests/test_multihost.py's launcher):
with one workdir for both processes, process 0 builds WORKDIR/world (the held-out captions
included) and process 1 only reads it; with a workdir per process (local disks, fine for plain
training stages), process 1 finds no world after the barrier and builds its own. Either way
both processes read the same examples and the same tokenizer. The two processes share this
machine, so the per-host build lock is switched off in them (as if on two hosts): the barrier
alone must keep process 1 from building.

The examples are counted where they are made (`world.generate_example`), so "built" means
generated, whoever did it: the TFDS dataset, the LLaVA export, the tokenizer's corpus."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time

import numpy as np

import test_multihost  # tests/ is on the path (setup.cfg)

DATA = dict(kind="world", world_seed=5, image_size=32, num_captions=6, num_instructions=6, num_heldout=4,
            vocab_size=512, max_objects=5, tokenizer="")


def world_digest(data) -> dict:
    """sha256 of what a training run reads: every split's examples, the held-out captions, the tokenizer."""
    from comd_jax import stages
    from comd_jax.data.synthetic import world

    out = {}
    for split in (*world.SPLITS, stages.HELDOUT_CAPTIONS):
        source, digest = data.source(split), hashlib.sha256()
        for i in range(len(source)):
            ex = source[i]
            digest.update(json.dumps([ex.id, ex.conversations]).encode())
            for image in ex.images:
                digest.update(np.asarray(image).tobytes())
        out[split] = [len(source), digest.hexdigest()]
    with open(os.path.join(data.tokenizer_dir, "tokenizer.json"), "rb") as f:
        out["tokenizer"] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_process_0_builds_a_shared_world_and_a_host_without_it_builds_its_own(tmp_path):
    from comd_jax import stages

    root = str(tmp_path)
    test_multihost.run_job(__file__, lambda i: [root, os.path.join(root, f"report{i}.json")], logdir=root,
                           timeout=90)
    p0, p1 = (json.load(open(os.path.join(root, f"report{i}.json"))) for i in range(2))
    assert (p0["process"], p1["process"]) == ([0, 2], [1, 2])
    # One workdir: only process 0 generated examples; process 1 read them.
    assert p0["generated"]["shared"] > 0 and p1["generated"]["shared"] == 0
    # A workdir per process: each built its own, from the same spec.
    assert p0["generated"]["local"] == p1["generated"]["local"] == p0["generated"]["shared"]
    assert p0["world"]["shared"] == p1["world"]["shared"] == p0["world"]["local"] == p1["world"]["local"]
    assert p0["world"]["shared"][stages.HELDOUT_CAPTIONS][0] == DATA["num_heldout"]
    assert os.path.isdir(os.path.join(root, "shared", "world", "tfds_heldout"))  # built up front, not lazily


def test_processes_of_one_host_take_turns_at_the_build(tmp_path):
    """`_host_lock` (one task per GPU shares a host): a second taker waits for the first."""
    from comd_jax import stages

    root, events = str(tmp_path / "world"), []

    def second():
        with stages._host_lock(root):
            events.append("second in")

    with stages._host_lock(root):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        events.append("first out")
    thread.join(5)
    assert events == ["first out", "second in"]
    with stages._host_lock(str(tmp_path / "another")):  # another folder: its own lock
        with stages._host_lock(root):
            pass


def main(process_id: int, port: int, root: str, report: str):
    import jax
    from ml_collections import ConfigDict

    from comd_jax import stages
    from comd_jax.data.synthetic import world

    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    generated = {"n": 0}
    make = world.generate_example

    def counted(*args, **kwargs):
        generated["n"] += 1
        return make(*args, **kwargs)

    world.generate_example = counted  # iterate_split looks it up in its module
    # As if on two hosts: no lock between them, only the barrier orders the build.
    stages._host_lock = lambda root: contextlib.nullcontext()
    config = ConfigDict({"data": DATA})
    result = {"process": [jax.process_index(), jax.process_count()], "generated": {}, "world": {}}
    for case, workdir in (("shared", os.path.join(root, "shared")),
                          ("local", os.path.join(root, f"local{process_id}"))):
        generated["n"] = 0
        data = stages.stage_data(config, workdir)
        result["generated"][case] = generated["n"]
        result["world"][case] = world_digest(data)
    with open(report, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
