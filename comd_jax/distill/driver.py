"""The whole CoMD run: `comd_jax.distill.driver.run_comd(config, workdir)`.

  job (mesh, data, tokenizer) → the data kind's parts (the offline world trains its
  teacher here) → student warm-up stages → teacher endpoint (a URL, or our server on
  the teacher checkpoint, in its own process) → initial pool answered by the teacher →
  R rounds of tune → assess → select → augment → the student evaluated after every
  round, the teacher once → WORKDIR/report/.

The driver works on the protocols of `comd_jax.distill.protocol` only; which data
kind supplies them is `comd_jax.distill.kinds`' table. Each piece resumes from its
own files: trainer checkpoints per stage and per round, the loop's state and
per-item JSONL, and the cached evaluations.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os

from comd_jax import multihost, paths
from comd_jax.distill import pool as pool_lib
from comd_jax.distill.rounds import Components, DistillConfig, Loop
from comd_jax.distill.selection import SelectionConfig


def distill_config(config) -> DistillConfig:
    d = config.distill
    return DistillConfig(
        rounds=d.rounds, competitive=d.competitive, teacher_floor=d.teacher_floor or None,
        max_new_per_round=d.max_new_per_round, answer_max_tokens=d.answer_max_tokens,
        concurrency=d.concurrency, assess_chunk=d.assess_chunk, seed=config.seed, seed_policy=d.seed_policy,
        seeds_per_round=d.seeds_per_round, oracle_answers=d.oracle_answers, kd=d.kd,
        kd_ce_weight=d.kd_ce_weight,
        selection=SelectionConfig(threshold=d.threshold, easy_keep=d.easy_keep, student_margin=d.student_margin))


def _llm_judge(config):
    def make(client):
        from comd_jax.distill.judges import LLMJudge

        return LLMJudge(client, max_tokens=config.distill.judge_max_tokens)
    return make


def _llm_augmentor(config):
    def make(client):
        from comd_jax.distill.augment import LLMAugmentor

        return LLMAugmentor(client, per_seed=config.distill.per_seed, concurrency=config.distill.concurrency)
    return make


def _judge_client(config, teacher_client):
    """The judge's endpoint (`distill.judge_url`, `judge_model`, key from the environment variable
    `judge_api_key_env`), or the teacher's when no judge URL is set."""
    from comd_jax.distill.endpoint import check_answers, openai_base
    from comd_jax.serve.client import ChatClient, ClientConfig

    d = config.distill
    if not d.judge_url:
        if d.judge_model and d.judge_model != d.teacher_model:
            return ChatClient(dataclasses.replace(teacher_client.config, model=d.judge_model))
        return teacher_client
    from comd_jax.distill.endpoint import api_key

    url, key = openai_base(d.judge_url), api_key(config, "judge_api_key_env")
    with multihost.writing("comd_jax.distill: the judge URL answers"):  # process 0 asks it
        if multihost.is_writer():
            check_answers(url, "judge_url", key)
    return ChatClient(ClientConfig(base_url=url, model=d.judge_model or d.teacher_model, api_key=key or None,
                                   max_concurrency=d.concurrency))


def _pick(table: dict, field: str, name: str, client):
    if name not in table:
        raise ValueError(f"config.distill.{field}={name!r}: this data offers {sorted(table)}")
    return table[name](client)


def answer_initial_pool(config, client, pool) -> list:
    """The first pool, its targets answered by the teacher (or, with `distill.oracle_answers`, the
    data's own answers kept). Called once, on process 0, when there is no pool yet."""
    entries = pool.entries()
    if config.distill.oracle_answers:
        print(f"== the data's own answers fill the initial pool ({len(entries)}; oracle) ==", flush=True)
        for e in entries:
            e.provenance.update(round=-1, answered_by="oracle")
        return entries
    print(f"== the teacher answers the initial pool ({len(entries)}) ==", flush=True)
    from comd_jax.serve.client import ItemSkipped

    replies = client.chat_many_sync([
        (pool_lib.chat_messages(e, pool.images_of(e)),
         {"temperature": 0.0, "max_tokens": config.distill.answer_max_tokens}) for e in entries], skipped_ok=True)
    for e, reply in zip(entries, replies):
        e.provenance.update(round=-1, answered_by="teacher")
        if isinstance(reply, ItemSkipped):  # pooled without a target: never trained on, counted
            logging.warning("initial pool %s: the teacher's answer is unusable (%s); not trained on", e.id, reply)
            e.target, e.provenance["skipped"] = "", reply.reason
        else:
            e.target = reply[0].text.strip()
    return entries


def _check(config, workdir: str) -> None:
    """What can be refused before any compute, is."""
    if config.distill.rounds > 0:  # before hours of teacher training, not after
        multihost.require_posix_workdir(workdir, "the competitive distillation loop (distill.rounds > 0)")
    if config.distill.oracle_answers and config.distill.augmentor != "procedural":
        raise ValueError(f"distill.oracle_answers needs distill.augmentor='procedural' (its new scenes carry the "
                         f"world's answers); {config.distill.augmentor!r} writes instructions without one")


def _external_scorer(config):
    """The client of `distill.teacher_url` when the run distils its top-k (`distill.kd`) on process 0;
    None where nothing is to be checked (no KD, no rounds, our own server, the other processes)."""
    d = config.distill
    if d.kd == "none" or not d.teacher_url or d.rounds == 0 or not multihost.is_writer():
        return None
    from comd_jax.distill.endpoint import api_key, check_answers, openai_base
    from comd_jax.serve.client import ChatClient, ClientConfig

    url, key = openai_base(d.teacher_url), api_key(config, "teacher_api_key_env")
    check_answers(url, "teacher_url", key)
    return ChatClient(ClientConfig(base_url=url, model=d.teacher_model, api_key=key or None, retries=2))


def check_scoring(config) -> None:
    """With `distill.kd`, an external teacher (`distill.teacher_url`) must score given answers
    with top-k log-probabilities; refused by URL before any compute. (Our own server can.)"""
    from comd_jax.serve.client import ScoringUnsupported

    client, d = _external_scorer(config), config.distill
    if client is None:
        return
    try:
        client.probe_scoring(d.kd_top_k)
    except ScoringUnsupported as e:
        raise ScoringUnsupported(
            f"config.distill.kd={d.kd!r} needs a teacher that scores given answers (the top-{d.kd_top_k} "
            f"log-probabilities at every position: vLLM's prompt_logprobs), and this one cannot: {e}. Set "
            "distill.kd='none', or serve the teacher with vLLM or python -m comd_jax.serve (docs/byo.md)") from None


def check_alignment(config, student, pool) -> None:
    """With `distill.kd` and an external teacher: one pool entry scored by the teacher and checked
    token by token against the student's own tokenization (`kd_scores.align`), before the student
    trains, so a teacher with another tokenizer or prompt layout is refused up front."""
    import asyncio

    from comd_jax.distill import kd_scores

    client, d = _external_scorer(config), config.distill
    entries = pool.entries() if client is not None else []
    if not entries:
        return
    entry = dataclasses.replace(entries[0], target=entries[0].target.strip() or "Yes.")
    messages = pool_lib.chat_messages(entry, pool.images_of(entry)) + [{"role": "assistant", "content": entry.target}]
    scores = asyncio.run(client.score(messages, d.kd_top_k))
    ids, mask = student.sample_tokens(entry)
    kd_scores.align(scores, ids, mask, d.kd_top_k, f"the start-up check on pool entry {entry.id}")


def _scorer(config, workdir: str, client, student, images_of):
    if config.distill.kd == "none":
        return None
    from comd_jax.distill.kd_scores import Scorer

    return Scorer(client, os.path.join(workdir, "distill", "teacher_scores"), config.distill.kd_top_k,
                  student.sample_tokens, images_of)


def run_comd(config, workdir: str) -> dict:
    from comd_jax.distill import evaluation
    from comd_jax.distill.endpoint import TeacherEndpoint, snapshot
    from comd_jax.job import Job
    from comd_jax.distill.kinds import kind_for
    from comd_jax.distill.student import LocalStudent
    from comd_jax.eval.endpoint_answerer import EndpointAnswerer
    from comd_jax.serve.client import ChatClient, ClientConfig, ServerProcess

    from comd_jax import experiment

    config = experiment.validated(config)
    workdir = paths.absolute(workdir)
    _check(config, workdir)
    section = evaluation.eval_section(config)  # its files are checked before any compute
    with multihost.writing("comd_jax.distill: the teacher endpoint can score"):  # process 0 asks it
        check_scoring(config)
    os.makedirs(workdir, exist_ok=True)
    with multihost.writing("comd_jax.distill: config.json written"):  # process 0 writes it
        snapshot(config, workdir)  # what ran, whatever the teacher is (no key: keys live in the environment)
    job = Job.start(config, workdir)
    kind = kind_for(job)
    student = LocalStudent(job, kind.pool.image_root)
    with multihost.writing("comd_jax.distill: the teacher's tokens align with the student's"):
        check_alignment(config, student, kind.pool)
    print("== student warm-up ==", flush=True)
    warm_up = student.warm_up()

    d = config.distill
    endpoint = TeacherEndpoint(config, workdir, d.teacher_checkpoint or kind.teacher_checkpoint,
                               ServerProcess)
    with endpoint as base_url:
        client = ChatClient(ClientConfig(base_url=base_url, model=d.teacher_model, api_key=endpoint.key or None,
                                         max_concurrency=d.concurrency))
        judge_client = _judge_client(config, client) if d.judge == "llm" or "llava_bench" in section.benchmarks \
            else client
        evals = evaluation.Evaluations(workdir, section.benchmarks, {
            **{name: make() for name, make in evaluation.suite_benchmarks(
                section, judge_client, config.distill.judge_max_tokens).items()
               if name in section.benchmarks}, **kind.benchmarks}, section.max_new_tokens)
        if section.benchmarks:
            print("== benchmarks: the student before round 0 ==", flush=True)
        baseline = evals.student(-1, student)
        loop = Loop(distill_config(config), workdir, Components(
            teacher=client,
            judge=_pick({"llm": _llm_judge(config), **kind.judges}, "judge", d.judge, judge_client),
            augmentor=_pick({"llm": _llm_augmentor(config), **kind.augmentors}, "augmentor", d.augmentor, client),
            answer_student=student.answer, tune=student.tune, images_of=kind.pool.images_of,
            after_tune=lambda r: _print_round(r, evals.student(r, student)),
            scorer=_scorer(config, workdir, client, student, kind.pool.images_of)))
        loop.seed_pool(lambda: answer_initial_pool(config, client, kind.pool))
        print("== competitive distillation rounds ==", flush=True)
        state = loop.run()
        print("== benchmarks: the teacher, and any round not yet scored ==", flush=True)
        teacher = evals.teacher(EndpointAnswerer(client, max_tokens=section.max_new_tokens))
        rounds = [evals.student(r, student) for r in range(d.rounds)]

    results = round_results(config, state, student, section.benchmarks, baseline, teacher, rounds)
    if multihost.is_writer():
        write_report(workdir, kind, results, warm_up)
    return results


def _print_round(r: int, results: dict) -> None:
    for name, result in results.items():
        print(f"student after round {r}, {name}: {_scores_line(result.get('scores') or {})}", flush=True)
        if result.get("image_reliance"):
            print(f"  image reliance {_reliance_line(result['image_reliance'])}", flush=True)


def _scores_line(scores: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in scores.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)) or "(no scores)"


def round_results(config, state: dict, student, names: tuple, baseline: dict, teacher: dict,
                  rounds: list) -> dict:
    """results.json: {benchmarks, teacher, baseline, rounds: [{round, student, pool_size, hard,
    student_wins, added, verdicts_excluded, student_params_sha256, ...}]}; scores by benchmark."""
    from comd_jax.distill.evaluation import scores

    def reliance(results: dict):
        return next((r["image_reliance"] for r in results.values() if r.get("image_reliance")), None)

    teacher_reliance = reliance(teacher)
    if teacher_reliance:
        print(f"teacher image reliance: {_reliance_line(teacher_reliance)}", flush=True)
    out = []
    for r, scored in enumerate(rounds):
        history = [h for h in state["history"] if h["round"] == r]

        def field(phase, key):
            return next((h.get(key) for h in history if h["phase"] == phase), None)

        out.append({"round": r, "student": scores(scored),
                    "pool_size": field("tune", "train_pool"), "hard": field("select", "hard"),
                    "student_wins": field("select", "student_wins"), "added": field("augment", "added"),
                    "verdicts_excluded": field("select", "excluded"),
                    "judge_skipped": field("assess", "skipped") or {}, "dropped": field("augment", "dropped") or {},
                    "student_params_sha256": student.fingerprint(r),
                    "student_image_reliance": reliance(scored)})
        _print_round(r, scored)
    return {"benchmarks": list(names), "teacher": scores(teacher), "baseline": scores(baseline), "rounds": out,
            "teacher_image_reliance": teacher_reliance, "baseline_image_reliance": reliance(baseline)}


def write_report(workdir: str, kind, results: dict, warm_up: list) -> None:
    """report.md and the plots, made from results.json's numbers."""
    from comd_jax.distill.evaluation import flat, headline
    from comd_jax.eval.report import write_round_report

    report_dir = os.path.join(workdir, "report")
    os.makedirs(report_dir, exist_ok=True)
    names = tuple(results["benchmarks"])
    teacher = flat(results["teacher"], names)
    by_round = {"baseline": {"student": flat(results["baseline"], names), "teacher": teacher}}
    by_round.update({str(e["round"]): {"student": flat(e["student"], names), "teacher": teacher}
                     for e in results["rounds"]})
    if names:
        from comd_jax.eval import race

        results = {**results, "race": race.race(by_round, headline(names))}
        write_round_report(by_round, report_dir, title=kind.title, headline=headline(names),
                           summary=race.first_screen(results["race"]))
    else:
        from comd_jax import atomic

        atomic.write_text(os.path.join(report_dir, "report.md"),
                          f"# {kind.title}\n\nNo benchmark configured (config.eval.benchmarks); the rounds' "
                          "counts and fingerprints are in results.json.\n")
    with open(os.path.join(report_dir, "results.json"), "w") as f:
        json.dump({**results, **kind.report, "student_stages": warm_up}, f, indent=2)


def _reliance_line(r: dict) -> str:
    return (f"held-out loss {r['loss']:.4f} with its own images, {r['loss_other_images']:.4f} with another "
            f"example's (gap {r['gap']:+.4f}; about 0 = the model answers without looking)")
