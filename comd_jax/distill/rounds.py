"""The competitive distillation loop: tune → assess → select → augment, round after round.

Every phase leaves its results on disk before the next starts, and the loop
state (round, phase) is written atomically at each boundary, so a restarted
run resumes at the phase it reached. Assessment and augmentation append one
line per finished item, so a crash loses at most the requests in flight and a
resumed phase skips what is already done. The student's own state lives in
the trainer's Orbax checkpoints (one stage per round).

The loop never knows who answers: `teacher` is any `ChatClient`, the student
is any `answer(entries) -> texts` callable, the trainer any
`tune(round_index, train_json) -> None` callable.

Multi-host: every process runs the loop, because tuning and the student's
answers are collective computations over a mesh spanning the hosts. Everything
else happens once, on process 0 (`comd_jax.multihost.is_writer`): it alone
calls the teacher, the judge and the augmentor and writes the loop's files
(state.json, the pools, the per-item JSONL, selection, augmented images); the
other processes wait at a barrier after each write and then read what process
0 wrote, so all of them continue from the same pool and state. The student's
answers are computed by all processes; only process 0's copy is judged and
written. The work directory must therefore be one POSIX filesystem every host
sees (NFS / Filestore, or a bucket mounted with gcsfuse); a gs:// URL is refused
up front because the per-item appends need POSIX append. With one process the
barriers are no-ops and the behaviour is the single-host one.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from typing import Callable, Optional, Sequence

import numpy as np

from comd_jax import multihost
from comd_jax.distill import kd_scores
from comd_jax.distill import pool as pool_lib
from comd_jax.distill.augment import filter_novel
from comd_jax.distill.judges import Verdict
from comd_jax.distill.selection import SelectionConfig, select
from comd_jax.serve.client import ItemSkipped

PHASES = ("tune", "assess", "select", "augment")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    rounds: int = 4
    selection: SelectionConfig = SelectionConfig()
    competitive: bool = True  # a student answer the assessor prefers by the margin becomes the target
    teacher_floor: Optional[float] = None  # teacher answers scored below this leave the training set
    max_new_per_round: int = 256
    answer_max_tokens: int = 128
    concurrency: int = 8
    assess_chunk: int = 64  # student answers per batch of the assessment; verdicts land per item
    seed: int = 0
    # "hard": augmentation grows from what the assessor found hard (CoMD). "random": as many
    # seeds drawn uniformly from the pool — plain distillation with the same teacher calls
    # and training steps, the ablation's baseline.
    seed_policy: str = "hard"
    # 0: as many seeds as the selection gives (hard + easy kept); "random" draws as many as its
    # own assessment selected, which differs from CoMD's once the students differ. N > 0: exactly
    # N seeds a round under either policy ("hard" fills up after the selection with random
    # others), so that CoMD and plain make exactly the same number of teacher calls.
    seeds_per_round: int = 0
    # Diagnostic for data with ground truth (the offline world): new instructions take the
    # augmentor's own answer instead of the teacher's: what CoMD does with a teacher that knows.
    oracle_answers: bool = False
    # White-box signals (train/kd.py): "topk" scores the pool's teacher-answered targets; "on_policy"
    # scores the student's answers from the previous round's assessment, which train by KD alone.
    kd: str = "none"
    kd_ce_weight: float = 1.0  # 0: rows without the teacher's scores train on nothing (train/kd.py)

    def __post_init__(self):
        if self.kd not in ("none", "topk", "on_policy"):
            raise ValueError(f"kd must be 'none', 'topk' or 'on_policy', got {self.kd!r}")
        if self.seed_policy not in ("hard", "random"):
            raise ValueError(f"seed_policy must be 'hard' or 'random', got {self.seed_policy!r}")
        if self.seeds_per_round < 0:
            raise ValueError(f"seeds_per_round must be >= 0 (0: the selection decides), got {self.seeds_per_round}")


@dataclasses.dataclass
class Components:
    teacher: object  # ChatClient
    judge: object  # .judge(question, teacher, student, images, **kw) -> Verdict
    augmentor: object  # .propose(seeds, round, images) -> candidates
    answer_student: Callable[[int, Sequence[pool_lib.PoolEntry]], list]  # (round, entries) -> texts
    tune: Callable[[int, str], None]  # (round, LLaVA JSON of the train pool)
    images_of: Callable[[pool_lib.PoolEntry], list] = lambda entry: []  # PNG bytes for the endpoints
    # Called on every process once round r's tuning is on disk (the driver scores the student
    # there, so a user sees each round's benchmarks as the run goes). It must be idempotent: a
    # kill inside it resumes at the assessment, and the driver catches up what it missed.
    after_tune: Optional[Callable[[int], None]] = None
    # With distill.kd: a kd_scores.Scorer (the teacher's top-k of given answers, kept on disk).
    scorer: Optional[object] = None


class Loop:
    def __init__(self, cfg: DistillConfig, workdir: str, parts: Components):
        self.cfg, self.parts = cfg, parts
        if cfg.rounds > 0:
            multihost.require_posix_workdir(workdir, "the competitive distillation loop (distill.rounds > 0)")
        self.dir = os.path.join(workdir, "distill")
        if multihost.is_writer():
            os.makedirs(self.dir, exist_ok=True)
        self.state_path = os.path.join(self.dir, "state.json")

    # -- files ----------------------------------------------------------------------
    def path(self, name: str, round_index: Optional[int] = None) -> str:
        return os.path.join(self.dir, name if round_index is None else f"round{round_index}_{name}")

    def load_state(self) -> dict:
        if os.path.exists(self.state_path):
            with open(self.state_path) as f:
                return json.load(f)
        return {"round": 0, "phase": PHASES[0], "history": []}

    def save_state(self, state: dict):
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=2)
        os.replace(tmp, self.state_path)

    def train_pool(self) -> list:
        return pool_lib.load(self.path("train_pool.jsonl"))

    # -- the loop -------------------------------------------------------------------
    def seed_pool(self, entries):
        """The initial pool (targets = teacher answers); written once, by process 0.

        `entries`: the entries, or a function making them (called only where the pool is
        written, so the teacher answers the initial pool once, on process 0, and only when
        there is no pool yet)."""
        with multihost.writing("comd_jax.distill: initial pool written"):
            if multihost.is_writer() and not os.path.exists(self.path("train_pool.jsonl")):
                pool_lib.append(self.path("train_pool.jsonl"), entries() if callable(entries) else entries)

    def run(self) -> dict:
        multihost.barrier("comd_jax.distill: loop start")  # the pool and state are on disk for everyone
        state = self.load_state()
        while state["round"] < self.cfg.rounds:
            r = state["round"]
            for phase in PHASES[PHASES.index(state["phase"]):]:
                # process 0's failure in a phase (the teacher, judge or augmentor) stops every process here
                with multihost.writing(f"comd_jax.distill: round {r} {phase} done"):
                    summary = getattr(self, f"_{phase}")(r)  # process 0's summary; None elsewhere
                    if multihost.is_writer():
                        state["history"].append({"round": r, "phase": phase, **(summary or {})})
                        next_index = PHASES.index(phase) + 1
                        state.update(round=r if next_index < len(PHASES) else r + 1,
                                     phase=PHASES[next_index % len(PHASES)])
                        self.save_state(state)
                if not multihost.is_writer():
                    state = self.load_state()
                if phase == "tune" and self.parts.after_tune is not None:
                    self.parts.after_tune(r)
        return state

    def _tune(self, r: int) -> dict:
        entries = [e for e in self.train_pool() if not e.provenance.get("excluded") and e.target.strip()]
        if not entries:
            raise RuntimeError(f"{self.path('train_pool.jsonl')}: no entry has a usable target "
                               "(all excluded or empty answers); nothing to train on")
        train_json = self.path("train.json", r)
        kd = {}
        with multihost.writing(f"comd_jax.distill: round {r} train.json written"):
            if multihost.is_writer():
                samples = entries
                if self.cfg.kd != "none":
                    samples, kd = self._scored_samples(r, entries)
                    if not kd and self.cfg.kd_ce_weight == 0:
                        raise RuntimeError(f"{train_json}: distill.kd_ce_weight=0 trains only on the teacher's "
                                           f"scores, and the teacher scored none of round {r}'s {len(entries)} "
                                           "entries (see the warnings above); nothing to train on")
                    kd_scores.write(kd_scores.kd_path(train_json), kd)
                pool_lib.write_llava(train_json, samples)
        self.parts.tune(r, train_json)  # collective: every host reads its share of train_json
        summary = {"train_pool": len(entries), "empty_targets": sum(not e.target.strip() for e in self.train_pool())}
        if self.cfg.kd != "none" and multihost.is_writer():
            summary.update(kd_scored=len(kd), kd_only=sum(not s.ce for s in kd.values()))
        return summary

    def _scored_samples(self, r: int, entries: list) -> tuple:
        """(the round's training samples, {sample id: ScoredAnswer}); process 0 only.

        topk: the teacher scores its own answers in the pool. on_policy: it scores the student's
        answers from round r - 1's assessment, which join the samples as KD-only rows (none in
        round 0, before any assessment; an empty answer has no token to score and is left out)."""
        scorer = self.parts.scorer
        if scorer is None:
            raise ValueError(f"distill.kd={self.cfg.kd!r} needs a scorer (the teacher endpoint's top-k)")
        if self.cfg.kd == "topk":
            answered = [e for e in entries if e.provenance.get("answered_by") == "teacher"]
            return entries, scorer.scores_for(answered)
        if r == 0:
            return entries, {}
        records = _records(self.path("assess.jsonl", r - 1))
        own = []
        for e in entries:
            record = records.get(e.id)
            answer = (record or {}).get("student", "").strip()
            if answer and not record.get("skipped"):
                own.append(dataclasses.replace(e, id=f"{e.id}~student{r - 1}", target=answer,
                                               provenance={**e.provenance, "on_policy_round": r - 1}))
        scored = scorer.scores_for(own, ce=False)
        return entries + [e for e in own if e.id in scored], scored

    def _assess(self, r: int) -> Optional[dict]:
        """Student answers (batched, in-process, on every process) and verdicts (process 0),
        appended per item."""
        out = self.path("assess.jsonl", r)
        done = _done_ids(out)
        todo = [e for e in self.train_pool() if e.id not in done]
        # Everyone has its list before process 0 appends: all answer the same chunks.
        multihost.barrier(f"comd_jax.distill: round {r} assessment to do")
        for start in range(0, len(todo), self.cfg.assess_chunk):
            chunk = todo[start:start + self.cfg.assess_chunk]
            answers = self.parts.answer_student(r, chunk)  # collective across hosts
            # a judge failing on process 0 stops the others here, not in the next chunk's collective
            with multihost.writing(f"comd_jax.distill: round {r} assessed from {start}"):
                if multihost.is_writer():
                    self._write_verdicts(out, chunk, answers)
        if not multihost.is_writer():
            return None
        records = _records(out)
        skipped = _count(r.get("skipped") for r in records.values())
        if skipped:
            logging.warning("round %d: %d judge request(s) skipped (%s); their items are excluded this round",
                            r, sum(skipped.values()), ", ".join(f"{k} {v}" for k, v in skipped.items()))
        return {"assessed": len(records), "skipped": skipped}

    def _write_verdicts(self, out: str, chunk: list, answers: list) -> None:
        verdicts = asyncio.run(self._judge(chunk, answers))
        with open(out, "a") as f:
            for entry, answer, verdict in zip(chunk, answers, verdicts):
                record = {"id": entry.id, "student": answer, "teacher": entry.target,
                          "scores": {"teacher": verdict.teacher, "student": verdict.student}, "raw": verdict.raw}
                if verdict.skipped:
                    record["skipped"] = verdict.skipped
                f.write(json.dumps(record) + "\n")
                f.flush()

    async def _judge(self, entries, answers) -> list:
        gate = asyncio.Semaphore(self.cfg.concurrency)

        async def one(entry, answer):
            async with gate:
                kwargs = {"reference": entry.reference, "skill": entry.skill} if entry.reference is not None \
                    and _takes_reference(self.parts.judge) else {}
                try:
                    return await self.parts.judge.judge(entry.question(), entry.target, answer,
                                                        self.parts.images_of(entry), **kwargs)
                except ItemSkipped as e:  # this item's request, not the run: excluded and counted
                    logging.warning("assessing %s: %s", entry.id, e)
                    return Verdict(None, None, [str(e)], skipped=e.reason)

        return await asyncio.gather(*(one(e, a) for e, a in zip(entries, answers)))

    def _select(self, r: int) -> Optional[dict]:
        if not multihost.is_writer():
            return None  # the others read the rewritten pool after the phase's barrier
        records = _records(self.path("assess.jsonl", r))
        entries = self.train_pool()
        verdicts = [Verdict(records[e.id]["scores"]["teacher"], records[e.id]["scores"]["student"], [])
                    for e in entries]
        rng = np.random.default_rng([self.cfg.seed, r, 0x5E1])
        chosen = select(verdicts, self.cfg.selection, rng)
        # Competitive targets and the teacher floor rewrite the pool for the next tuning.
        updated = []
        wins = set(chosen.student_wins)
        for i, (entry, verdict) in enumerate(zip(entries, verdicts)):
            entry.provenance.setdefault("scores", {})[f"round{r}"] = {"teacher": verdict.teacher,
                                                                      "student": verdict.student}
            if self.cfg.competitive and i in wins:
                entry.target = records[entry.id]["student"]
                entry.provenance.update(answered_by="student", won_round=r)
            floor = self.cfg.teacher_floor
            if floor is not None and verdict.valid and entry.provenance.get("answered_by") == "teacher" \
                    and verdict.teacher < floor:
                entry.provenance["excluded"] = True
            updated.append(entry)
        _rewrite(self.path("train_pool.jsonl"), updated)
        with open(self.path("selection.json", r), "w") as f:
            json.dump({"hard": [entries[i].id for i in chosen.hard],
                       "easy_kept": [entries[i].id for i in chosen.easy_kept],
                       "student_wins": [entries[i].id for i in chosen.student_wins],
                       "excluded": [entries[i].id for i in chosen.excluded]}, f, indent=2)
        return chosen.counts()

    def _augment(self, r: int) -> Optional[dict]:
        if not multihost.is_writer():
            return None  # the augmentor and the teacher are process 0's; the others read the pool after
        with open(self.path("selection.json", r)) as f:
            chosen = json.load(f)
        current = self.train_pool()
        by_id = {e.id: e for e in current}
        seed_ids = seeds_for_round(chosen, sorted(by_id), self.cfg.seed_policy, self.cfg.seeds_per_round,
                                   np.random.default_rng([self.cfg.seed, r, 0xA11]))
        seeds = [by_id[i] for i in seed_ids][: self.cfg.max_new_per_round]
        candidates = asyncio.run(self.parts.augmentor.propose(
            seeds, r, {s.id: self.parts.images_of(s) for s in seeds}))
        # Novelty against the pool as it was before this round's augmentation (a resumed
        # phase must not count its own earlier additions as duplicates).
        before = [e.instruction for e in current if e.provenance.get("augmented_round") != r]
        kept, dropped = filter_novel(candidates, before) \
            if getattr(self.parts.augmentor, "text_novelty", True) else (candidates, 0)
        out = self.path("augment.jsonl", r)
        done = _done_ids(out)
        todo = [(f"r{r}-aug{k:05d}", c) for k, c in enumerate(kept) if f"r{r}-aug{k:05d}" not in done]
        asyncio.run(self._answer_candidates(r, todo, out))
        # Answers land in completion order; the pool takes them by id so reruns agree.
        answered = [e for e in pool_lib.load(out) if e.id not in by_id]
        added = sorted((e for e in answered if not e.provenance.get("skipped")), key=lambda e: e.id)
        pool_lib.append(self.path("train_pool.jsonl"), added)
        # Every candidate that did not become a pool entry, by why (the augmentor's own filters,
        # the novelty filter, the teacher's unusable answers).
        drops = dict(getattr(self.parts.augmentor, "last_rejected", None) or {})
        if dropped:
            drops["near_duplicate"] = dropped
        for reason, n in _count(e.provenance.get("skipped") for e in answered).items():
            drops[f"teacher_{reason}"] = n
        return {"seeds": len(seeds), "candidates": len(candidates), "near_duplicates": dropped,
                "added": len(added), "dropped": drops}

    async def _answer_candidates(self, r: int, todo, out: str):
        """The teacher answers each new instruction; each answer is appended as it lands."""
        gate = asyncio.Semaphore(self.cfg.concurrency)
        if self.cfg.oracle_answers:  # checked before anything is written, so nothing is half done
            missing = [new_id for new_id, c in todo if c.target is None]
            if missing:
                raise ValueError(f"distill.oracle_answers: the {self.parts.augmentor.name} augmentor's candidate "
                                 f"{missing[0]} has no ground-truth answer (only procedural ones do)")

        async def one(new_id, c):
            async with gate:
                entry = pool_lib.PoolEntry(
                    id=new_id, instruction=c.instruction, target="", image=c.image, skill=c.skill,
                    reference=c.reference,
                    provenance={"round": r, "augmented_round": r, "seed_id": c.seed.id, "answered_by": "teacher",
                                "augmentor": self.parts.augmentor.name})
                if self.cfg.oracle_answers:
                    entry.target, entry.provenance["answered_by"] = c.target, "oracle"
                    pool_lib.append(out, [entry])
                    return
                try:
                    choices = await self.parts.teacher.chat(
                        pool_lib.chat_messages(entry, self.parts.images_of(entry)),
                        temperature=0.0, max_tokens=self.cfg.answer_max_tokens)
                    entry.target = choices[0].text.strip()
                except ItemSkipped as e:  # kept on file (a resumed phase does not ask again), not pooled
                    logging.warning("teacher answer for %s: %s", new_id, e)
                    entry.provenance["skipped"] = e.reason
                pool_lib.append(out, [entry])

        await asyncio.gather(*(one(new_id, c) for new_id, c in todo))


def seeds_for_round(chosen: dict, pool_ids: Sequence[str], policy: str, budget: int,
                    rng: np.random.Generator) -> list:
    """The ids that seed this round's augmentation.

    "hard" takes the selection (hard, then the easy ones kept); with a budget it keeps a random
    `budget` of the hard ones when there are more, else tops up with the easy ones kept and then
    with random others. "random" takes `budget` (or as many as the selection) uniformly."""
    selected = chosen["hard"] + chosen["easy_kept"]
    if policy == "random":
        size = min(budget or len(selected), len(pool_ids))
        return sorted(rng.choice(pool_ids, size=size, replace=False))
    if not budget:
        return selected
    hard = list(chosen["hard"])
    if len(hard) >= budget:
        return sorted(rng.choice(hard, size=budget, replace=False))
    head, taken = selected[:budget], set(selected)
    others = [i for i in pool_ids if i not in taken]
    top_up = rng.choice(others, size=min(budget - len(head), len(others)), replace=False).tolist() \
        if len(head) < budget else []
    return head + sorted(top_up)


def _count(reasons) -> dict:
    out = {}
    for reason in reasons:
        if reason:
            out[reason] = out.get(reason, 0) + 1
    return dict(sorted(out.items()))


def _takes_reference(judge) -> bool:
    import inspect

    return "reference" in inspect.signature(judge.judge).parameters


def _records(path: str) -> dict:
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a torn last line; its item is redone
                    out[record["id"]] = record
    return out


def _done_ids(path: str) -> set:
    return set(_records(path))


def _rewrite(path: str, entries) -> None:
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    pool_lib.append(tmp, entries)
    os.replace(tmp, path)
