"""The whole CoMD run: `comd_jax.distill.driver.run_comd(config, workdir)`.

  world → teacher (trained once, cached) → student warm-up stages → teacher
  server (own process) → initial pool answered by the teacher → R rounds of
  tune → assess → select → augment, with the student and the teacher evaluated
  on the held-out split after every round → WORKDIR/report/.

Each piece resumes from its own files: trainer checkpoints per stage and per
round, the loop's state and per-item JSONL, and the per-round evaluations.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import jax

from comd_jax import atomic
from comd_jax import config as config_lib
from comd_jax import multihost
from comd_jax import sharding as shd
from comd_jax import stages as stages_lib
from comd_jax.distill import pool as pool_lib
from comd_jax.distill.augment import LLMAugmentor, ProceduralAugmentor
from comd_jax.distill.judges import LLMJudge, WorldJudge
from comd_jax.distill.protocol import Choice
from comd_jax.distill.rounds import Components, DistillConfig, Loop
from comd_jax.distill.selection import SelectionConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ChoiceClient:
    """Adapts the serve client (texts) to the loop's protocol (choices)."""

    def __init__(self, client):
        self.client = client

    async def chat(self, messages, **params):
        return [Choice(text) for text in await self.client.chat(messages, **params)]


def distill_config(config) -> DistillConfig:
    d = config.distill
    return DistillConfig(
        rounds=d.rounds, competitive=d.competitive, teacher_floor=d.teacher_floor or None,
        max_new_per_round=d.max_new_per_round, answer_max_tokens=d.answer_max_tokens,
        concurrency=d.concurrency, assess_chunk=d.assess_chunk, seed=config.seed, seed_policy=d.seed_policy,
        # .get: a config.json written before these fields existed still resumes
        seeds_per_round=d.get("seeds_per_round", 0), oracle_answers=d.get("oracle_answers", False),
        selection=SelectionConfig(threshold=d.threshold, easy_keep=d.easy_keep, student_margin=d.student_margin))


def _judge(config, client):
    table = {
        # Ground truth, scored as the held-out evaluation scores the world's skills.
        "reference": WorldJudge,
        "llm": lambda: LLMJudge(ChoiceClient(client)),
    }
    return table[config.distill.judge]()


def _augmentor(config, client, spec, image_dir):
    table = {
        "procedural": lambda: ProceduralAugmentor(spec, image_dir, per_seed=config.distill.per_seed,
                                                  seed=config.seed),
        "llm": lambda: LLMAugmentor(ChoiceClient(client), per_seed=config.distill.per_seed),
    }
    return table[config.distill.augmentor]()


def initial_pool(config, llava_json: str, answers: list, answered_by: str = "teacher") -> list:
    with open(llava_json) as f:
        samples = json.load(f)[: config.distill.pool_size]
    return [pool_lib.PoolEntry(
        id=s["id"], instruction=s["conversations"][0]["value"], target=answer.strip(), image=s.get("image"),
        skill=s.get("skill"), reference=(s.get("answer") or "").split(" | ")[0] or None,
        provenance={"round": -1, "answered_by": answered_by}) for s, answer in zip(samples, answers)]


def _snapshot(config, workdir: str) -> str:
    path = os.path.join(workdir, "config.json")
    if multihost.is_writer():
        atomic.write_text(path, config.to_json(indent=2))  # the teacher server reads it back
    return f"{os.path.join(REPO, 'configs', 'snapshot.py')}:{path}"


def run_comd(config, workdir: str) -> dict:
    from transformers import AutoTokenizer

    from comd_jax.eval.answerer import GreedyAnswerer, ask
    from comd_jax.eval.image_reliance import image_reliance
    from comd_jax.eval.loading import world_spec
    from comd_jax.eval.report import write_round_report
    from comd_jax.eval.synthetic import evaluate_world
    from comd_jax.models import build
    from comd_jax.data import pipeline
    from comd_jax.data.llava_json import LlavaJsonSource
    from comd_jax.run import check_tokenizer, params_fingerprint, stage_config, train_stages
    from comd_jax.serve.client import ChatClient, ClientConfig, ServerProcess, user_message
    from comd_jax.serve.loading import restore_params
    from comd_jax.train.trainer import train_stage

    if config.distill.rounds > 0:  # before hours of teacher training, not after
        multihost.require_posix_workdir(workdir, "the competitive distillation loop (distill.rounds > 0)")
    if config.distill.get("oracle_answers", False) and config.distill.augmentor != "procedural":
        raise ValueError(f"distill.oracle_answers needs distill.augmentor='procedural' (its new scenes carry the "
                         f"world's answers); {config.distill.augmentor!r} writes instructions without one")
    os.makedirs(workdir, exist_ok=True)
    student_cfg, teacher_cfg = config_lib.model_config(config.model), config_lib.model_config(config.teacher)
    mesh_cfg = config_lib.mesh_config(config.mesh)
    mesh = shd.make_mesh(mesh_cfg.shape(jax.device_count()))
    recipe, rules = mesh_cfg.recipe, shd.rules_for(mesh_cfg.recipe)
    data = stages_lib.stage_data(config, workdir)
    spec = world_spec(config)
    if spec is None:
        raise ValueError("run_comd's default loop needs config.data.kind='world' (the offline world)")
    tokenizer = AutoTokenizer.from_pretrained(data.tokenizer_dir)
    check_tokenizer(tokenizer, student_cfg)
    check_tokenizer(tokenizer, teacher_cfg, "teacher")
    llava_dir = os.path.join(stages_lib.world_dir(workdir), "llava")

    print("== teacher (trained once, cached in the workdir) ==", flush=True)
    teacher_params, teacher_summary = train_stages(config, workdir, teacher_cfg, config.teacher_stages, data,
                                                   tokenizer, mesh, recipe, seed=teacher_seed(config))
    teacher_ckpt = os.path.join(workdir, "checkpoints", config.teacher_stages[-1])
    print("== student warm-up ==", flush=True)
    student_params, student_summary = train_stages(config, workdir, student_cfg, config.stages, data, tokenizer,
                                                   mesh, recipe)

    def model_of(model_cfg, params):
        graphdef, abstract = build.abstract_model(model_cfg, rules)
        return build.merge(graphdef, abstract, params)

    def answerer(model_cfg, params, progress=None):
        return GreedyAnswerer(model_of(model_cfg, params), tokenizer, data.image_processor,
                              max_new_tokens=config.distill.answer_max_tokens, batch_size=config.distill.gen_batch,
                              progress=progress)

    teacher_answerer = answerer(teacher_cfg, teacher_params, progress="held-out: teacher")
    state = {"params": student_params, "round": None}
    tune_section = config.round_tune

    def student_params_for(r: int):
        """The student after round r's tuning (restored from its checkpoint on resume)."""
        if state["round"] != r:
            state["params"] = restore_params(os.path.join(workdir, "checkpoints", f"round{r}_tune"), student_cfg,
                                             mesh, recipe)
            state["round"] = r
        return state["params"]

    def tune(r: int, train_json: str):
        section = tune_section
        stage = stage_config(f"round{r}_tune", section)
        cfg = pipeline.PipelineConfig(batch_size=section.global_batch // jax.process_count(),
                                      length_buckets=tuple(section.length_buckets), max_images=section.max_images,
                                      seed=config.seed + r, strict=section.strict_data)
        pipe = pipeline.make_pipeline(LlavaJsonSource(train_json, llava_dir), template=section.template,
                                      tokenizer=tokenizer, image_config=data.image_processor,
                                      num_image_tokens=student_cfg.num_image_tokens, config=cfg)
        init = student_params_for(r - 1) if r > 0 else student_params
        with pipe:
            result, _ = train_stage(stage, student_cfg, mesh, recipe, config.seed, workdir, pipe,
                                    init_params=init)
        state.update(params=result.params, round=r)

    def image_bytes(entry):
        if entry.image is None:
            return []
        with open(os.path.join(llava_dir, entry.image), "rb") as f:
            return [f.read()]

    def answer_student(r: int, entries):
        model = answerer(student_cfg, student_params_for(r), progress=f"round{r}_assess: student")
        return model.answer([ask(e.instruction, os.path.join(llava_dir, e.image) if e.image else None)
                             for e in entries])

    with _teacher_endpoint(config, workdir, teacher_ckpt, ServerProcess) as base_url:
        client = ChatClient(ClientConfig(base_url=base_url, model=config.distill.teacher_model,
                                         api_key=config.distill.teacher_api_key or None,
                                         max_concurrency=config.distill.concurrency))
        loop = Loop(distill_config(config), workdir, Components(
            teacher=ChoiceClient(client), judge=_judge(config, client),
            augmentor=_augmentor(config, client, spec, llava_dir),
            answer_student=answer_student, tune=tune, images_of=image_bytes))

        def teacher_answers_initial_pool():  # called once, on process 0, when there is no pool yet
            with open(os.path.join(llava_dir, "instructions.json")) as f:
                samples = json.load(f)[: config.distill.pool_size]
            if config.distill.get("oracle_answers", False):  # the world's own answers stand in for the teacher's
                print(f"== the world's answers fill the initial pool ({len(samples)}; oracle) ==", flush=True)
                return initial_pool(config, os.path.join(llava_dir, "instructions.json"),
                                    [s["conversations"][1]["value"] for s in samples], answered_by="oracle")
            print(f"== the teacher answers the initial pool ({len(samples)}) ==", flush=True)
            replies = client.chat_many_sync([
                ([user_message(s["conversations"][0]["value"].replace("<image>", "").strip(),
                               image_bytes(pool_lib.PoolEntry("", "", "", image=s.get("image"))))],
                 {"temperature": 0.0, "max_tokens": config.distill.answer_max_tokens}) for s in samples])
            return initial_pool(config, os.path.join(llava_dir, "instructions.json"), [r[0] for r in replies])

        loop.seed_pool(teacher_answers_initial_pool)
        print("== competitive distillation rounds ==", flush=True)
        loop_state = loop.run()

    print("== evaluation after every round ==", flush=True)
    results, by_round = [], {}
    teacher_eval = teacher_heldout(
        config, teacher_ckpt, spec,
        lambda: evaluate_world({"teacher": teacher_answerer}, spec, limit=config.distill.eval_limit))
    # Held-out instructions (config.tune's eval split): does each model look at the images?
    def heldout(model_cfg):  # its own image-token count: teacher and student may differ
        return stages_lib.eval_batches(data, config.tune, tokenizer, model_cfg.num_image_tokens)()

    reliance = {"teacher": image_reliance(teacher_answerer.model, heldout(teacher_cfg))}
    print(f"teacher image reliance: {_reliance_line(reliance['teacher'])}", flush=True)
    for r in range(config.distill.rounds):
        student_eval = evaluate_world({"student": answerer(student_cfg, student_params_for(r),
                                                           progress=f"held-out: student after round {r}")}, spec,
                                      limit=config.distill.eval_limit)
        models = {**teacher_eval["models"], **student_eval["models"]}
        history = [h for h in loop_state["history"] if h["round"] == r]
        entry = {"round": r,
                 "student": models["student"]["scores"], "teacher": models["teacher"]["scores"],
                 "pool_size": next((h.get("train_pool") for h in history if h["phase"] == "tune"), None),
                 "hard": next((h.get("hard") for h in history if h["phase"] == "select"), None),
                 "student_wins": next((h.get("student_wins") for h in history if h["phase"] == "select"), None),
                 "added": next((h.get("added") for h in history if h["phase"] == "augment"), None),
                 "student_params_sha256": params_fingerprint(student_params_for(r)),
                 "student_image_reliance": image_reliance(model_of(student_cfg, student_params_for(r)),
                                                          heldout(student_cfg))}
        print(f"student after round {r}: held-out mean {entry['student']['mean']:.2f} "
              f"(teacher {entry['teacher']['mean']:.2f}); image reliance "
              f"{_reliance_line(entry['student_image_reliance'])}", flush=True)
        results.append(entry)
        by_round[f"round {r}"] = {"student": entry["student"], "teacher": entry["teacher"]}
    report_dir = os.path.join(workdir, "report")
    if multihost.is_writer():
        write_round_report(by_round, report_dir, title="CoMD on the offline world: held-out scores by round")
        with open(os.path.join(report_dir, "results.json"), "w") as f:
            json.dump({"rounds": results, "teacher_image_reliance": reliance["teacher"],
                       "teacher_stages": teacher_summary, "student_stages": student_summary}, f, indent=2)
    return {"rounds": results}


def teacher_heldout(config, teacher_ckpt: str, spec, evaluate) -> dict:
    """The teacher's held-out evaluation, computed once per teacher checkpoint, world and answer
    settings, and kept beside the checkpoint's real folder. The runs of an ablation link the first
    run's teacher, so they share the file; at 2700 held-out examples that saves minutes a run."""
    import dataclasses
    import hashlib

    if "://" in teacher_ckpt or not os.path.isdir(teacher_ckpt):  # an object store: no side files
        return evaluate()
    real = os.path.realpath(teacher_ckpt)
    steps = sorted((d, os.stat(os.path.join(real, d)).st_mtime_ns) for d in os.listdir(real) if d.isdigit())
    key = json.dumps({"checkpoint": real, "steps": steps, "spec": dataclasses.asdict(spec),
                      "limit": config.distill.eval_limit, "max_new_tokens": config.distill.answer_max_tokens},
                     sort_keys=True)
    path = f"{real}_heldout_{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    # Every process decides alike (the file predates this run or is absent for all), so the
    # collective evaluation runs on all of them or on none.
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    result = evaluate()
    if multihost.is_writer():
        with open(path + ".tmp", "w") as f:
            json.dump(result, f)
        os.replace(path + ".tmp", path)
    return result


def teacher_seed(config) -> int:
    """The teacher's own seed (config.teacher_seed), or the run's when that is -1."""
    return config.seed if config.get("teacher_seed", -1) < 0 else config.teacher_seed


def _reliance_line(r: dict) -> str:
    return (f"held-out loss {r['loss']:.4f} with its own images, {r['loss_other_images']:.4f} with another "
            f"example's (gap {r['gap']:+.4f}; about 0 = the model answers without looking)")


class _teacher_endpoint:
    """Our server as a child process (config.distill.teacher_url empty), else the given URL.
    Only process 0 talks to the teacher, so only process 0 starts the server; the others get
    an empty URL they never use."""

    def __init__(self, config, workdir, checkpoint, server_cls):
        self.url = config.distill.teacher_url
        self.server = None if self.url or not multihost.is_writer() else server_cls(
            _snapshot(config, workdir), workdir=workdir, checkpoint=checkpoint,
            model_name=config.distill.teacher_model)

    def __enter__(self) -> str:
        if self.server is None:
            return self.url
        self.server.start()
        return self.server.base_url

    def __exit__(self, *exc):
        if self.server is not None:
            self.server.stop()
