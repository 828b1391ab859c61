"""`python tests/_killed_run.py PHASE N -- <launch/train.py flags>`: the real launcher,
SIGKILLed by itself at a chosen point of the CoMD loop, as a power cut would do it.

PHASE=assess: dies after N assessment batches have been judged, before the N-th
is written (earlier batches are on disk, the N-th is lost in flight).
PHASE=augment: dies right after the teacher's N-th answer to a new instruction
is appended (the others in flight are lost).
PHASE=score: dies right after the N-th chunk of teacher scores is stored (distill.kd).
No finally-blocks, no atexit, no Orbax flush: SIGKILL gives the process no say.
"""
import os
import runpy
import signal
import sys

# Run with the checkout on PYTHONPATH, as the e2e tests start it.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from comd_jax.distill import pool, rounds  # noqa: E402


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(phase: str, after: int):
    count = {"n": 0}
    if phase == "assess":
        judge = rounds.Loop._judge

        async def judged_then_maybe_die(self, entries, answers):
            verdicts = await judge(self, entries, answers)
            count["n"] += 1
            if count["n"] >= after:
                die()
            return verdicts

        rounds.Loop._judge = judged_then_maybe_die
    elif phase == "augment":
        append = pool.append

        def append_then_maybe_die(path, entries):
            append(path, entries)
            if path.endswith("_augment.jsonl"):
                count["n"] += len(entries)
                if count["n"] >= after:
                    die()

        pool.append = append_then_maybe_die
    elif phase == "score":
        from comd_jax.distill import kd_scores

        write = kd_scores.write

        def write_then_maybe_die(path, scored):
            write(path, scored)
            if os.sep + "teacher_scores" + os.sep in path:
                count["n"] += 1
                if count["n"] >= after:
                    die()

        kd_scores.write = write_then_maybe_die
    else:
        raise SystemExit(f"unknown phase {phase!r}")


if __name__ == "__main__":
    phase, after, sep, *flags = sys.argv[1:]
    assert sep == "--", sys.argv
    arm(phase, int(after))
    sys.argv = [os.path.join(REPO, "launch", "train.py"), *flags]
    runpy.run_path(sys.argv[0], run_name="__main__")
    raise SystemExit(f"the run ended without reaching {phase} #{after}")
