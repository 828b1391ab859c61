"""The offline world's per-skill eval on a tiny random model (plumbing, not accuracy),
its ScienceQA-format export, Orbax checkpoint loading, and the round report."""
import os

import jax
import numpy as np
import pytest
from PIL import Image

from comd_jax.data.synthetic import world
from comd_jax.eval import report, scienceqa
from comd_jax.eval.answerer import FixedAnswerer, GreedyAnswerer, ask
from comd_jax.eval.suite import EvalSettings, run_benchmark
from comd_jax.eval.synthetic import world_turns
from comd_jax.eval.world_scoring import answer_match, token_f1

SPEC = world.WorldSpec(seed=3, num_captions=24, num_instructions=90, num_heldout=18)


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    from transformers import AutoTokenizer

    from comd_jax.configs import comd
    from comd_jax import config as config_lib
    from comd_jax.data.images import ImageProcessorConfig
    from comd_jax.data.synthetic.tokenizer import build_world_tokenizer
    from comd_jax.models import build

    tokenizer = AutoTokenizer.from_pretrained(
        build_world_tokenizer(SPEC, str(tmp_path_factory.mktemp("tok")), vocab_size=600))
    cfg = config_lib.model_config(comd.get_config("smoke").model)
    model = build.build_model(cfg, seed=0)
    return cfg, model, GreedyAnswerer(model, tokenizer, ImageProcessorConfig(size=SPEC.image_size),
                                      max_new_tokens=6, batch_size=8)


def _oracle():
    """Answers every world turn with its reference reply: scores must be perfect."""
    def key(request):  # the same question is asked about different images
        image = request.images[0]
        if isinstance(image, str):  # the ScienceQA export's PNG (lossless)
            image = np.asarray(Image.open(image).convert("RGB"))
        return request.messages, image.tobytes()

    references = {key(t["request"]): t["reference"] for t in world_turns(SPEC)}
    return FixedAnswerer(lambda request: references[key(request)])


def test_answer_match_requires_commitment():
    assert answer_match("The circle is red.", "red")
    assert not answer_match("The circle is red or blue.", "red")
    assert not answer_match("There are 13 objects.", "3")
    assert answer_match("No, there is no blue square.", "no")
    assert answer_match("The red circle is larger.", "red circle")
    assert token_f1("a b c", "a b d") == pytest.approx(2 / 3)


def test_world_per_skill_student_and_teacher(tiny_student, tmp_path):
    _, _, student = tiny_student
    settings = EvalSettings(world_spec=SPEC)
    result = run_benchmark("world", {"student": student, "teacher": _oracle()}, settings, str(tmp_path))
    teacher, pupil = result["models"]["teacher"], result["models"]["student"]
    assert set(teacher["skills"]) == set(SPEC.skills)
    assert all(v == pytest.approx(100.0) for v in teacher["scores"].values()), teacher["scores"]
    assert teacher["skills"]["multiple_choice"]["metric"] == "letter"
    assert teacher["skills"]["detailed_description"]["metric"] == "token_f1"
    # The random student produced text for every turn, multi-turn follow-ups included, and got scored.
    assert len(pupil["records"]) == len(world_turns(SPEC)) > SPEC.num_heldout
    assert all(isinstance(r["reply"], str) for r in pupil["records"])
    assert 0.0 <= pupil["scores"]["mean"] <= 100.0
    # The world's multiple choice went through the ScienceQA evaluator.
    assert teacher["scores"]["scienceqa_style"] == pytest.approx(100.0)
    sqa = teacher["scienceqa"]["table"]
    assert sqa["NAT"]["total"] == sqa["IMG"]["total"] == sqa["G1-6"]["total"] == 2 and sqa["SOC"]["total"] == 0
    assert os.path.getsize(tmp_path / "world.json") > 0 and "student" in open(tmp_path / "world.md").read()


def test_world_export_reads_back_in_llava_format(tmp_path):
    from comd_jax.eval.world_scienceqa import export_scienceqa

    files = export_scienceqa(SPEC, str(tmp_path))
    questions = scienceqa.load_json_or_jsonl(files["question_file"])
    problems = scienceqa.load_json_or_jsonl(files["problems_file"])
    for q in questions:
        prompt = scienceqa.build_prompt(q)
        original = world.generate_example(SPEC, world.HELDOUT, int(q["id"].split("-")[1]))
        assert prompt == original.conversations[0]["value"]  # exactly what the model trained on
        assert "ABCD"[problems[q["id"]]["answer"]] == original.answer
        assert os.path.isfile(os.path.join(files["image_folder"], q["image"]))


def test_greedy_answerer_batches_match_single_requests(tiny_student):
    _, _, student = tiny_student
    image = world.generate_example(SPEC, world.HELDOUT, 0).image
    requests = [ask("<image>\nWhat colour is the circle?", image), ask("How many objects are there?"),
                ask("<image>\nDescribe the image in detail.", image[::-1])]
    together = student.answer(requests)
    assert together == [student.answer([r])[0] for r in requests]
    with pytest.raises(ValueError, match="placeholder"):
        student.answer([ask("no placeholder", image)])


def test_orbax_checkpoint_loads_params_only(tiny_student, tmp_path, monkeypatch):
    from comd_jax.configs import comd
    from flax import nnx

    from comd_jax import config as config_lib
    from comd_jax import sharding as shd
    from comd_jax.checkpoints import load_model
    from comd_jax.eval.loading import infer_workdir
    from comd_jax.train.checkpoint import StageCheckpoints
    from comd_jax.train.state import create_setup, init_state

    cfg, model, _ = tiny_student
    mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
    setup = create_setup(cfg, config_lib.optim_config(comd.get_config("smoke").tune), mesh)
    state = init_state(setup, params=nnx.state(model).to_pure_dict())
    stage_dir = tmp_path / "checkpoints" / "tune"
    checkpoints = StageCheckpoints(str(stage_dir), save_every=1, async_save=False)
    checkpoints.save(4, state, {"seed": 0}, force=True)
    checkpoints.close()
    for path in (stage_dir, stage_dir / "4"):
        loaded = nnx.state(load_model(cfg, str(path))).to_pure_dict()
        for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(nnx.state(model).to_pure_dict())):
            np.testing.assert_array_equal(a, b)
    assert infer_workdir(str(stage_dir / "4"), "x") == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither"):
        load_model(cfg, str(tmp_path))
    # Relative paths, as a user types them: Orbax itself refuses them, so both loaders resolve first.
    from comd_jax.checkpoints import restore_params

    monkeypatch.chdir(tmp_path)
    for params in (nnx.state(load_model(cfg, "checkpoints/tune")).to_pure_dict(),
                   restore_params("checkpoints/tune/4", cfg, mesh, "fsdp")):
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(nnx.state(model).to_pure_dict())):
            np.testing.assert_array_equal(a, b)


def test_round_report_tables_and_plots(tmp_path):
    rounds = {r: {"student": {"mean": 40 + 10 * r, "colour": 50 + r, "counting": None if r == 0 else 30.0},
                  "teacher": {"mean": 60.0, "colour": 70.0, "counting": 55.0}} for r in range(3)}
    paths = report.write_round_report(rounds, str(tmp_path))
    for key in ("score_by_round", "per_skill", "last_round"):
        assert paths[key].endswith(".png") and os.path.getsize(paths[key]) > 1000
        assert open(paths[key], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    text = open(paths["report"]).read()
    assert "| round | colour | counting | mean |" in text
    assert "| 0 | 50.00 | — | 40.00 |" in text  # a missing score is a gap, not 0
    assert "| mean | 60.00 | 60.00 |" in text    # last round, student beside teacher
    assert "![per_skill](per_skill.png)" in text
