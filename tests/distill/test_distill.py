"""Distillation building blocks: judges, selection, pool persistence, augmentors."""
import asyncio
import json

import numpy as np
import pytest

from comd_jax.distill import augment, judges, pool, selection
from comd_jax.distill.protocol import Choice


class ScriptedClient:
    """A chat endpoint that answers from a list, recording what it was asked."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    async def chat(self, messages, **params):
        self.calls.append((messages, params))
        reply = self.replies.pop(0)
        n = params.get("n", 1)
        return [reply if isinstance(reply, Choice) else Choice(reply)] * n


def run(coro):
    return asyncio.run(coro)


def test_llm_judge_swaps_order_and_averages():
    # Forward (teacher first): 8 vs 4. Backward (student first): 6 vs 7 → teacher (8+7)/2, student (4+6)/2.
    client = ScriptedClient(["Score of Assistant 1: 8\nScore of Assistant 2: 4",
                             "Score of Assistant 1: 6\nScore of Assistant 2: 7"])
    verdict = run(judges.LLMJudge(client).judge("Q?", "teacher answer", "student answer"))
    assert (verdict.teacher, verdict.student) == (7.5, 5.0)
    text = lambda call: [p for p in call[0][1]["content"] if p["type"] == "text"][0]["text"]
    first, second = text(client.calls[0]), text(client.calls[1])
    assert first.index("teacher answer") < first.index("student answer")
    assert second.index("student answer") < second.index("teacher answer")


def test_llm_judge_retries_then_excludes_unparseable():
    client = ScriptedClient(["no scores here", "Score of Assistant 1: 9\nScore of Assistant 2: 2",
                             "still nothing", "nothing", "nothing"])
    verdict = run(judges.LLMJudge(client, retries=2).judge("Q?", "t", "s"))
    assert not verdict.valid and verdict.teacher is None  # excluded, never read as 0
    assert len(verdict.raw) == 5  # one retry forward, then three tries backward, all kept for audit


@pytest.mark.parametrize("pred,ref,metric,score", [
    ("The answer is B.", "B", "letter", 10.0),
    ("(C)", "B", "letter", 1.0),
    ("Red.", "red", "exact", 10.0),
    ("a red circle", "the red square", "f1", 1.0 + 9.0 * 0.5),
])
def test_reference_judge_scales_metrics(pred, ref, metric, score):
    verdict = run(judges.ReferenceJudge(metric_for=lambda skill: metric).judge(
        "Q?", pred, ref, reference=ref))
    assert verdict.teacher == pytest.approx(score) and verdict.student == 10.0


@pytest.mark.parametrize("skill,question,teacher,student,truth,scores", [
    # The world's targets are sentences: the truth named (and no rival) counts.
    ("colour", "What colour is the circle?", "The circle is red.", "The circle is blue.", "red", (10.0, 1.0)),
    ("colour", "What colour is the circle?", "The circle is red or blue.", "Red.", "red", (1.0, 10.0)),
    ("counting", "How many circles are there?", "There are 3 circles.", "There are 2 circles.", "3",
     (10.0, 1.0)),
    ("multiple_choice", "Which is larger?\nA. red circle\nB. blue square\nAnswer with the option's letter",
     "B", "The answer is A.", "B", (10.0, 1.0)),
    ("detailed_description", "Describe the image.", "There are 2 objects. A red circle.",
     "There are 2 objects.", "There are 2 objects. A red circle.", (10.0, 1.0 + 9.0 * 8 / 11)),
])
def test_world_judge_scores_sentences_like_the_heldout_evaluation(skill, question, teacher, student, truth,
                                                                   scores):
    verdict = run(judges.WorldJudge().judge(question, teacher, student, reference=truth, skill=skill))
    assert (verdict.teacher, verdict.student) == pytest.approx(scores)


def test_selection_threshold_easy_share_and_wins():
    v = lambda t, s: judges.Verdict(t, s, [])
    verdicts = [v(9, 3), v(8, 7.5), v(5, 8), v(7, 6), judges.Verdict(None, None, ["?"]), v(6, 6)]
    chosen = selection.select(verdicts, selection.SelectionConfig(threshold=1.0, easy_keep=0.5),
                              np.random.default_rng(0))
    assert chosen.hard == [0, 3]
    assert chosen.student_wins == [2]
    assert chosen.excluded == [4]
    assert len(chosen.easy_kept) == 2 and set(chosen.easy_kept) <= {1, 2, 5}


def test_pool_round_trip_and_torn_last_line(tmp_path):
    path = str(tmp_path / "pool.jsonl")
    entries = [pool.PoolEntry(f"e{i}", "<image>\nWhat colour?", "red", image="a.png", skill="colour",
                              provenance={"round": 0, "answered_by": "teacher"}) for i in range(3)]
    assert pool.append(path, entries) == 3
    with open(path, "a") as f:
        f.write('{"id": "e3", "instr')  # a crash mid-write
    assert [e.id for e in pool.load(path)] == ["e0", "e1", "e2"]
    with open(path, "w") as f:
        f.write('{"id": broken}\n' + entries[0].to_json() + "\n")
    with pytest.raises(ValueError, match=r"pool.jsonl:1"):
        pool.load(path)
    out = str(tmp_path / "train.json")
    pool.write_llava(out, entries)
    sample = json.load(open(out))[0]
    assert sample["image"] == "a.png" and sample["conversations"][1] == {"from": "gpt", "value": "red"}


def test_llm_augmentor_filters(tmp_path):
    seed = pool.PoolEntry("s0", "<image>\nHow many circles are there?", "two", image="a.png", skill="counting")
    client = ScriptedClient([
        Choice("#New Instruction#: How many red squares are in the picture?"),
    ])
    aug = augment.LLMAugmentor(client)
    got = run(aug.propose([seed], 1, {"s0": [b"\x89PNG fake"]}))
    assert [c.instruction for c in got] == ["<image>\nHow many red squares are in the picture?"]
    assert client.calls[0][0][0]["content"][0]["type"] == "image_url"  # same image sent along
    for text, finish, reason in [("Count.", "stop", "too_short"),
                                 ("How many shapes are in the image and what", "length", "truncated"),
                                 ("Given Instruction: how many shapes are there?", "stop", "echoes_prompt")]:
        assert augment.reject_reason(augment.clean(text), finish) == reason
    kept, dropped = augment.filter_novel(
        [augment.Candidate("<image>\nHow many circles are there in the image?", seed),
         augment.Candidate("<image>\nWhich shape is left of the blue square?", seed)],
        [seed.instruction])
    assert dropped == 1 and kept[0].instruction.endswith("blue square?")


def test_procedural_augmentor_is_deterministic_and_keeps_skill(tmp_path):
    from comd_jax.data.synthetic import world

    seeds = [pool.PoolEntry("s0", "<image>\nq", "a", skill="counting"),
             pool.PoolEntry("s1", "<image>\nq", "a", skill="spatial_relation")]
    spec = world.WorldSpec(seed=3)
    a = run(augment.ProceduralAugmentor(spec, str(tmp_path / "a"), per_seed=2, seed=1).propose(seeds, 2, {}))
    b = run(augment.ProceduralAugmentor(spec, str(tmp_path / "b"), per_seed=2, seed=1).propose(seeds, 2, {}))
    c = run(augment.ProceduralAugmentor(spec, str(tmp_path / "c"), per_seed=2, seed=1).propose(seeds, 3, {}))
    assert [x.skill for x in a] == ["counting", "counting", "spatial_relation", "spatial_relation"]
    assert [(x.instruction, x.target) for x in a] == [(x.instruction, x.target) for x in b]
    assert [x.image for x in a] != [x.image for x in c]  # another round draws other scenes
    assert all(x.reference and x.instruction.startswith("<image>") for x in a)
    assert (tmp_path / "a" / a[0].image).read_bytes() == (tmp_path / "b" / b[0].image).read_bytes()


def test_teacher_heldout_is_evaluated_once_per_checkpoint_world_and_limit(tmp_path):
    """The runs of an ablation link one teacher: the first run's held-out evaluation serves the rest,
    but a retrained teacher, another world or another limit is evaluated afresh."""
    import os

    import ml_collections

    from comd_jax.data.synthetic import world
    from comd_jax.distill.offline import teacher_heldout

    first = tmp_path / "comd" / "seed0" / "checkpoints"
    (first / "teacher_tune" / "1200").mkdir(parents=True)
    linked = tmp_path / "plain" / "seed0" / "checkpoints"
    linked.mkdir(parents=True)
    os.symlink(first / "teacher_tune", linked / "teacher_tune")
    config = ml_collections.ConfigDict({"distill": {"eval_limit": 9, "answer_max_tokens": 32}})
    spec = world.WorldSpec(num_heldout=9)
    calls = []

    def evaluate():
        calls.append(1)
        return {"models": {"teacher": {"scores": {"mean": 40.0 + len(calls)}}}}

    assert teacher_heldout(config, str(first / "teacher_tune"), spec, evaluate, str(tmp_path / "run"))["models"]["teacher"]["scores"] == \
        {"mean": 41.0}
    again = teacher_heldout(config, str(linked / "teacher_tune"), spec, evaluate, str(tmp_path / "run"))  # another run, same teacher
    assert len(calls) == 1 and again["models"]["teacher"]["scores"]["mean"] == 41.0
    config.distill.eval_limit = 5
    assert teacher_heldout(config, str(linked / "teacher_tune"), spec, evaluate, str(tmp_path / "run"))["models"]["teacher"]["scores"] == \
        {"mean": 42.0}
    teacher_heldout(config, str(first / "teacher_tune"), world.WorldSpec(seed=1, num_heldout=9), evaluate, str(tmp_path / "run"))
    assert len(calls) == 3
    (first / "teacher_tune" / "1500").mkdir()  # trained further: another teacher
    teacher_heldout(config, str(first / "teacher_tune"), world.WorldSpec(seed=1, num_heldout=9), evaluate, str(tmp_path / "run"))
    assert len(calls) == 4
    # A workdir in an object store (rounds=0 allows gs://) has no folder to keep the file in.
    teacher_heldout(config, "gs://bucket/run/checkpoints/teacher_tune", spec, evaluate, str(tmp_path / "run"))
    assert len(calls) == 5
    # A given teacher (a transformers directory, e.g. the package's, maybe read-only): its file goes in
    # the run's workdir, never beside it.
    given = tmp_path / "site-packages" / "world_teacher"
    given.mkdir(parents=True)
    (given / "config.json").write_text("{}")
    before = sorted(os.listdir(tmp_path / "site-packages"))
    teacher_heldout(config, str(given), spec, evaluate, str(tmp_path / "run"))
    teacher_heldout(config, str(given), spec, evaluate, str(tmp_path / "run"))
    assert len(calls) == 6 and sorted(os.listdir(tmp_path / "site-packages")) == before
    assert [n for n in os.listdir(tmp_path / "run" / "checkpoints") if n.startswith("teacher_heldout_")]
    (given / "config.json").write_text('{"changed": 1}')  # another teacher in the same place
    teacher_heldout(config, str(given), spec, evaluate, str(tmp_path / "run"))
    assert len(calls) == 7
