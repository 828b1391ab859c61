"""The distillation loop with stand-in models: pools grow with provenance, targets
become competitive, and a crash inside assessment or augmentation resumes to the
same pool as an uninterrupted run."""
import json
import os

import pytest

from comd_jax.data.synthetic import world
from comd_jax.distill import pool, rounds
from comd_jax.distill.augment import ProceduralAugmentor
from comd_jax.distill.judges import ReferenceJudge
from comd_jax.distill.protocol import Choice
from comd_jax.distill.selection import SelectionConfig


class Crash(RuntimeError):
    pass


class Teacher:
    """Answers with the first word of the question: deterministic, sometimes right."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = 0, fail_after

    async def chat(self, messages, **params):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise Crash("teacher endpoint down")
        content = messages[-1]["content"]
        text = content if isinstance(content, str) else content[-1]["text"]
        return [Choice(text.split()[0].lower())]


def student_answers(fail_after=None):
    seen = {"n": 0}

    def answer(round_index, entries):
        seen["n"] += len(entries)
        if fail_after is not None and seen["n"] > fail_after:
            raise Crash("student died")
        # Right (the reference) on even positions of the id, wrong otherwise.
        return [e.reference if int(e.id[-1]) % 2 == 0 else "no idea" for e in entries]

    return answer


def initial_pool():
    spec = world.WorldSpec(seed=5)
    out = []
    for i in range(12):
        ex = world.generate_example(spec, world.INSTRUCTIONS, i)
        out.append(pool.PoolEntry(f"p{i:02d}", ex.conversations[0]["value"], "wrong teacher answer",
                                  skill=ex.skill, reference=ex.answer.split(" | ")[0],
                                  provenance={"round": -1, "answered_by": "teacher"}))
    return out


def make_loop(workdir, teacher, student, tuned, **distill):
    parts = rounds.Components(
        teacher=teacher, judge=ReferenceJudge(metric_for=lambda skill: "f1"),
        augmentor=ProceduralAugmentor(world.WorldSpec(seed=9), os.path.join(workdir, "images"), seed=1),
        answer_student=student, tune=lambda r, path: tuned.append((r, len(json.load(open(path))))))
    cfg = rounds.DistillConfig(rounds=2, selection=SelectionConfig(threshold=1.0, easy_keep=0.25), seed=3,
                               **distill)
    loop = rounds.Loop(cfg, str(workdir), parts)
    loop.seed_pool(initial_pool())
    return loop


def final_pool(workdir):
    return [e.to_json() for e in pool.load(os.path.join(workdir, "distill", "train_pool.jsonl"))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    tuned = []
    state = make_loop(workdir, Teacher(), student_answers(), tuned).run()
    return workdir, state, tuned


def test_rounds_grow_the_pool_with_provenance(uninterrupted):
    workdir, state, tuned = uninterrupted
    assert state["round"] == 2 and [r for r, _ in tuned] == [0, 1]
    assert tuned[1][1] > tuned[0][1] == 12  # round 1 trains on the grown pool
    entries = pool.load(os.path.join(workdir, "distill", "train_pool.jsonl"))
    added = [e for e in entries if e.provenance.get("augmentor") == "procedural"]
    assert added and all(e.provenance["seed_id"] and e.provenance["round"] in (0, 1) for e in added)
    # Fresh scenes are new instructions even though the world's question templates repeat
    # their words: the text-novelty (ROUGE-L) filter is the LLM augmentor's, not this one's.
    augments = [h for h in state["history"] if h["phase"] == "augment"]
    assert all(h["near_duplicates"] == 0 and h["added"] == h["candidates"] > 0 for h in augments)
    selection = json.load(open(os.path.join(workdir, "distill", "round0_selection.json")))
    # The teacher's stand-in answers are wrong and the student is right on even ids: those are wins.
    assert set(selection["student_wins"]) == {e.id for e in entries[:12] if int(e.id[-1]) % 2 == 0}
    won = [e for e in entries if e.provenance.get("answered_by") == "student"]
    assert won and all(e.target == e.reference for e in won)  # competitive targets took the student's answer
    phases = [(h["round"], h["phase"]) for h in state["history"]]
    assert phases == [(r, p) for r in (0, 1) for p in rounds.PHASES]


@pytest.mark.parametrize("where", ["assess", "augment"])
def test_crash_and_resume_gives_the_same_pool(uninterrupted, tmp_path, where):
    reference_dir, _, reference_tuned = uninterrupted
    tuned = []
    teacher = Teacher(fail_after=2) if where == "augment" else Teacher()
    student = student_answers(fail_after=14) if where == "assess" else student_answers()
    with pytest.raises(Crash):
        make_loop(tmp_path, teacher, student, tuned).run()
    state = json.load(open(tmp_path / "distill" / "state.json"))
    assert state["phase"] == where  # it died inside that phase
    resumed = make_loop(tmp_path, Teacher(), student_answers(), tuned).run()
    assert resumed["round"] == 2
    assert final_pool(tmp_path) == final_pool(reference_dir)
    assert tuned[-1] == reference_tuned[-1]


def test_plain_distillation_spends_the_same_seeds_at_random(uninterrupted, tmp_path):
    _, comd_state, _ = uninterrupted
    plain = make_loop(tmp_path, Teacher(), student_answers(), [], seed_policy="random", competitive=False).run()
    seeds = lambda state: [h["seeds"] for h in state["history"] if h["phase"] == "augment"]
    assert seeds(plain) == seeds(comd_state)  # the same number of teacher calls per round
    entries = pool.load(os.path.join(tmp_path, "distill", "train_pool.jsonl"))
    assert not [e for e in entries if e.provenance.get("answered_by") == "student"]
    selection = json.load(open(tmp_path / "distill" / "round0_selection.json"))
    grown_from = {e.provenance["seed_id"] for e in entries if e.provenance.get("augmentor")}
    assert grown_from - set(selection["hard"] + selection["easy_kept"])  # not the assessor's choice


def test_a_seed_budget_gives_both_policies_the_same_teacher_calls(tmp_path):
    seeds = lambda state: [h["seeds"] for h in state["history"] if h["phase"] == "augment"]
    comd = make_loop(tmp_path / "comd", Teacher(), student_answers(), [], seeds_per_round=7).run()
    # A different student finds a different number of hard cases; the budget is the same.
    always_wrong = lambda r, entries: ["no idea"] * len(entries)
    plain = make_loop(tmp_path / "plain", Teacher(), always_wrong, [], seeds_per_round=7,
                      seed_policy="random", competitive=False).run()
    assert seeds(comd) == seeds(plain) == [7, 7]


def test_seeds_for_round_fills_the_budget_hard_first():
    import numpy as np

    ids = [f"p{i:02d}" for i in range(20)]
    chosen = {"hard": ["p03", "p07", "p11"], "easy_kept": ["p01"]}
    rng = lambda: np.random.default_rng(0)
    assert rounds.seeds_for_round(chosen, ids, "hard", 0, rng()) == ["p03", "p07", "p11", "p01"]
    topped = rounds.seeds_for_round(chosen, ids, "hard", 8, rng())
    assert topped[:4] == ["p03", "p07", "p11", "p01"] and len(set(topped)) == len(topped) == 8
    few = rounds.seeds_for_round(chosen, ids, "hard", 2, rng())
    assert len(few) == 2 and set(few) <= set(chosen["hard"])  # too many hard: a subset of them
    drawn = rounds.seeds_for_round(chosen, ids, "random", 8, rng())
    assert len(set(drawn)) == 8 and set(drawn) <= set(ids)
    assert len(rounds.seeds_for_round(chosen, ids, "random", 0, rng())) == 4  # as many as the selection
    assert len(rounds.seeds_for_round(chosen, ids, "random", 50, rng())) == 20  # never more than the pool
    with pytest.raises(ValueError, match="seeds_per_round"):
        rounds.DistillConfig(seeds_per_round=-1)


def test_oracle_answers_take_the_worlds_answer_and_never_ask_the_teacher(tmp_path):
    teacher = Teacher()
    make_loop(tmp_path, teacher, student_answers(), [], oracle_answers=True).run()
    # As answered (the pool may since have swapped in a winning student answer).
    added = [e for r in (0, 1) for e in pool.load(os.path.join(tmp_path, "distill", f"round{r}_augment.jsonl"))]
    assert added and teacher.calls == 0
    assert all(e.provenance["answered_by"] == "oracle" for e in added)
    # The world's full answer, which names the reference (the stand-in teacher would echo a word).
    named = [e for e in added if e.reference and e.skill in ("colour", "shape", "counting")]
    assert named and all(e.reference.lower() in e.target.lower() for e in named)


def test_oracle_answers_need_ground_truth(tmp_path):
    from comd_jax.distill.augment import Candidate

    class NoTruth:
        name, text_novelty = "llm", False

        async def propose(self, seeds, round_index, images):
            return [Candidate("What colour is the <image> circle?", seeds[0], target="The circle is red."),
                    Candidate("Describe the <image> scene in other words.", seeds[0])]

    loop = make_loop(tmp_path, Teacher(), student_answers(), [], oracle_answers=True)
    loop.parts.augmentor = NoTruth()
    with pytest.raises(ValueError, match="llm augmentor's candidate r0-aug00001 has no ground-truth answer"):
        loop.run()
    assert pool.load(os.path.join(tmp_path, "distill", "round0_augment.jsonl")) == []  # nothing half written


def test_oracle_answers_with_the_llm_augmentor_fail_before_any_training(tmp_path):
    """Its instructions carry no ground truth: say so at the start, not hours later in round 0's augmentation."""
    from comd_jax import config as config_lib
    from comd_jax.distill.driver import run_comd

    config = config_lib.preset("smoke")
    config.distill.update(dict(oracle_answers=True, augmentor="llm"))
    with pytest.raises(ValueError, match="oracle_answers needs distill.augmentor='procedural'"):
        run_comd(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")  # no world, no teacher, nothing written
