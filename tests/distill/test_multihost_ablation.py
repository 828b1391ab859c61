"""The ablation in a real two-process JAX job on CPU (tests/test_multihost.py's launcher), each
run a stand-in that "trains" what its workdir lacks (on process 0, as a real run's collective
checkpointing writes once): process 0 alone makes the shared links and writes ablation.json /
ablation.md, process 1 sees every link before each run starts, and both return the same summary."""
from __future__ import annotations

import json
import os
import sys

import test_multihost  # tests/ is on the path (setup.cfg)

CONFIG = {"seed": 0, "teacher_seed": -1, "teacher_stages": ["teacher_stage0"], "stages": ["stage0"],
          "distill": {"rounds": 2, "competitive": True, "seed_policy": "hard", "teacher_checkpoint": ""},
          "ablation": {"seeds": [0, 1], "variants": {"comd": {}, "plain": {"distill": {"competitive": False}}}}}
PARTS = ("world", "checkpoints/teacher_stage0", "checkpoints/stage0")


def test_process_0_links_and_writes_and_both_see_the_links(tmp_path):
    root = str(tmp_path)
    test_multihost.run_job(__file__, lambda i: [root, os.path.join(root, f"report{i}.json")], logdir=root,
                           timeout=60)
    p0, p1 = (json.load(open(os.path.join(root, f"report{i}.json"))) for i in range(2))
    # What each run found in its workdir when it started, on either process.
    assert p0["seen"] == p1["seen"] == [
        ["comd/seed0", []],
        ["plain/seed0", list(PARTS)],  # world, teacher and this seed's warm-up, linked
        ["comd/seed1", list(PARTS[:2])],  # world and teacher only: its own warm-up
        ["plain/seed1", list(PARTS)]]
    assert p0["linked"] == 8 and p1["linked"] == 0
    assert p0["written"] == ["ablation.json", "ablation.md"] and p1["written"] == []
    assert p0["summary"] == p1["summary"] == json.load(open(os.path.join(root, "ablation.json")))
    assert p0["summary"]["plain"]["runs"] == [[0.0, 1.0], [10.0, 11.0]]


def test_a_link_failing_on_process_0_stops_both_processes_with_its_message(tmp_path):
    """Process 0 cannot make the second run's links (a full disk, a read-only share): process 1
    must leave the links' barrier at once with process 0's error, not wait there until the
    coordination service gives up, and neither starts the run that lacks its links."""
    root = str(tmp_path)
    codes, texts = test_multihost.launch(__file__, lambda i: [root, os.path.join(root, f"report{i}.json"), "fail_link"],
                                         logdir=root, timeout=60, stop_at_first_failure=False)
    assert all(code > 0 for code in codes), (codes, [t[-3000:] for t in texts])  # exited, none killed
    assert "link is down" in texts[0]
    assert "process 0 failed before the barrier" in texts[1] and "link is down" in texts[1]
    for text in texts:  # only comd/seed0 ran: plain/seed0 is the first run with links to make
        assert "fake run start comd/seed0" in text and "fake run start plain/seed0" not in text
    assert not os.path.exists(os.path.join(root, "ablation.json"))


def main(process_id: int, port: int, root: str, report: str, fail: str = ""):
    import builtins

    import jax
    from ml_collections import ConfigDict

    from comd_jax import multihost
    from comd_jax.distill import ablation, driver

    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    seen, linked, written = [], [0], []

    def fake_run(cfg, run_dir):
        print("fake run start", os.path.relpath(run_dir, root), flush=True)
        seen.append([os.path.relpath(run_dir, root),
                     [p for p in PARTS if os.path.islink(os.path.join(run_dir, p))]])
        if multihost.is_writer():
            for part in PARTS:
                os.makedirs(os.path.join(run_dir, part), exist_ok=True)
        multihost.barrier(f"fake run {run_dir}")
        score = 10.0 * cfg.seed + cfg.distill.competitive
        return {"teacher": {"world": {"mean": 99.0}},
                "rounds": [{"student": {"world": {"mean": score + r}}} for r in range(cfg.distill.rounds)]}

    symlink, open_ = os.symlink, builtins.open

    def counted_symlink(*args, **kwargs):
        if fail == "fail_link":
            raise OSError("link is down")
        linked[0] += 1
        return symlink(*args, **kwargs)

    def recorded_open(path, mode="r", *args, **kwargs):
        if "w" in mode and os.path.dirname(os.path.abspath(path)) == os.path.abspath(root):
            written.append(os.path.basename(path))
        return open_(path, mode, *args, **kwargs)

    driver.run_comd, os.symlink = fake_run, counted_symlink
    builtins.open = recorded_open
    try:
        summary = ablation.run_ablation(ConfigDict(CONFIG), root)
    finally:
        builtins.open = open_
    with open(report, "w") as f:
        json.dump({"seen": seen, "linked": linked[0], "written": sorted(written), "summary": summary}, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:])
