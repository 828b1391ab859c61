"""The world teacher the package ships: its files are what the manifest records (sha256), it
loads as the transformers LLaVA directory it is, and it answers held-out questions of its
world, which a random model of its shape cannot."""
import pytest

from comd_jax.distill import world_teacher as wt


@pytest.fixture(scope="module")
def shipped():
    return wt.verify()  # every file against its sha256


def _answerer(directory, model=None):
    from transformers import AutoTokenizer

    from comd_jax import load_pretrained
    from comd_jax.data.images import ImageProcessorConfig
    from comd_jax.eval.answerer import GreedyAnswerer

    return GreedyAnswerer(model or load_pretrained(directory), AutoTokenizer.from_pretrained(directory),
                          ImageProcessorConfig.from_pretrained(directory), template="vicuna_v1", max_new_tokens=24,
                          batch_size=16)


def test_the_shipped_teacher_answers_its_worlds_held_out_questions(shipped):
    from comd_jax.data.synthetic import world
    from comd_jax.eval.synthetic import score_model, world_turns
    from comd_jax.models import build

    w = shipped["world"]
    assert w["patch_size"] == 4 and set(shipped["files"]) >= {"model.safetensors", "tokenizer.json", "config.json",
                                                             "preprocessor_config.json", "processor_config.json"}
    spec = world.WorldSpec(seed=w["world_seed"], image_size=w["image_size"], num_heldout=18)
    turns = world_turns(spec, world.HELDOUT, limit=18)  # two of each skill, multi-turn ones twice
    teacher = _answerer(wt.SHIPPED)
    scores = score_model(teacher, turns)
    # One held-out question, on its own: the first short-answer one it gets right among the
    # batch's gets the same right answer alone (a batch-only answer would be a serving bug).
    short = [t for t in turns if t["skill"] in ("colour", "shape", "counting", "existence")]
    batch = teacher.answer([t["request"] for t in short])
    first, answered = next((t, r) for t, r in zip(short, batch) if t["truth"].lower() in r.lower())
    reply = teacher.answer([first["request"]])[0]
    assert reply == answered and first["truth"].lower() in reply.lower(), (first["question"], first["truth"], reply)
    random = score_model(_answerer(wt.SHIPPED, build.build_model(teacher.model.cfg, seed=1)), turns)
    assert scores["scores"]["mean"] >= 40 > random["scores"]["mean"], (scores["scores"], random["scores"])


def test_the_default_world_takes_the_teachers_tokens_and_another_world_is_refused(shipped, tmp_path):
    from comd_jax.configs import comd
    from comd_jax import stages
    from comd_jax.job import Job
    from comd_jax.distill.offline import given_teacher_matches_world

    config = comd.get_config("default")
    config.data.update(dict(num_captions=16, num_instructions=16, num_heldout=9))  # a small world, same seed
    assert config.distill.teacher_checkpoint == wt.SHIPPED
    data = stages.stage_data(config, str(tmp_path / "run"))
    assert data.tokenizer_dir == wt.SHIPPED and not (tmp_path / "run" / "world" / "tokenizer").exists()
    given_teacher_matches_world(Job.start(config, str(tmp_path / "run")), wt.SHIPPED)  # sha256 and world: pass

    config.data.world_seed = 3  # another world: refused by field before any training
    with pytest.raises(ValueError, match="world_seed: the teacher's 0, this run's 3"):
        given_teacher_matches_world(Job.start(config, str(tmp_path / "other")), wt.SHIPPED)
