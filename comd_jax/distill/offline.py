"""The offline world as CoMD plug-ins: one set of the driver's parts, nothing more.

- Its teacher is trained by its own step (`train_teacher`) before the rounds, cached
  in the workdir's checkpoints, and then reached like any user's teacher: through
  our server started on that checkpoint (`distill.teacher_checkpoint`).
- Its pool is the first `distill.pool_size` of the world's LLaVA instruction file.
- With ground truth it brings a reference judge (`WorldJudge`, scored as the held-out
  evaluation scores) and a procedural augmentor (new scenes of a seed's skill).
- Its evaluator scores the held-out split per skill and measures image reliance.

The driver (`comd_jax.distill.driver`) imports nothing of this module; the table in
`comd_jax.distill.kinds` picks it for `config.data.kind == "world"`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from comd_jax import config as config_lib
from comd_jax import multihost
from comd_jax import stages as stages_lib
from comd_jax.job import Job
from comd_jax.distill.protocol import Kind
from comd_jax.train.sequence import check_tokenizer, train_stages


def teacher_seed(config) -> int:
    """The teacher's own seed (config.teacher_seed), or the run's when that is -1."""
    return config.seed if config.teacher_seed < 0 else config.teacher_seed


def train_teacher(job: Job) -> tuple:
    """The world's teacher through `config.teacher_stages` (resumable; a finished one is restored):
    (its checkpoint directory, the stages' summaries)."""
    config = job.config
    teacher_cfg = config_lib.model_config(config.teacher)
    check_tokenizer(job.tokenizer, teacher_cfg, "teacher")
    print("== teacher (trained once, cached in the workdir) ==", flush=True)
    _, summaries = train_stages(config, job.workdir, teacher_cfg, config.teacher_stages, job.data, job.tokenizer,
                                job.mesh, job.recipe, seed=teacher_seed(config))
    return os.path.join(job.workdir, "checkpoints", config.teacher_stages[-1]), summaries


@dataclasses.dataclass
class WorldPool:
    """The first `size` instructions of the world's LLaVA export (PNG images beside it)."""
    image_root: str
    size: int

    def entries(self) -> list:
        """Each example's first turn; its short ground truth is the reference."""
        from comd_jax.distill.pool import PoolEntry

        with open(os.path.join(self.image_root, "instructions.json")) as f:
            samples = json.load(f)[: self.size]
        return [PoolEntry(id=s["id"], instruction=s["conversations"][0]["value"],
                          target=s["conversations"][1]["value"].strip(), image=s.get("image"), skill=s.get("skill"),
                          reference=(s.get("answer") or "").split(" | ")[0] or None) for s in samples]

    def images_of(self, entry) -> list:
        if entry.image is None:
            return []
        with open(os.path.join(self.image_root, entry.image), "rb") as f:
            return [f.read()]


class WorldEvaluator:
    """The `world` benchmark: per-skill held-out scores (`distill.eval_limit` examples) and image
    reliance on the tuning stage's held-out instructions. The teacher's answers come through its
    endpoint, as any teacher's do; its image reliance needs its logits, so its checkpoint is also
    loaded here."""

    def __init__(self, job: Job, teacher_checkpoint: str):
        self.job, self.teacher_checkpoint = job, teacher_checkpoint
        self.spec = stages_lib.world_spec(job.config.data)
        self.teacher_cfg = config_lib.model_config(job.config.teacher)
        # The image-reliance probe reads this many held-out examples (0: the ones the scores use):
        # four batches (64) put a teacher's +0.19 gap (2700 examples) at +0.11 on another world.
        limit = job.config.distill.eval_limit
        self.reliance_examples = min(job.config.eval.reliance_examples or limit, limit)
        self.settings = {"limit": limit, "spec": dataclasses.asdict(self.spec),
                         "reliance_examples": self.reliance_examples}

    def _heldout(self, model_cfg):  # its own image-token count: teacher and student may differ
        job = self.job
        batches = max(1, self.reliance_examples // job.config.tune.global_batch)  # whole batches: no extra compile
        return stages_lib.eval_batches(job.data, job.config.tune, job.tokenizer, model_cfg.num_image_tokens,
                                       max_batches=batches)()

    def _scores(self, name: str, answerer) -> dict:
        from comd_jax.eval.synthetic import evaluate_world

        return evaluate_world({name: answerer}, self.spec, limit=self.job.config.distill.eval_limit)

    def teacher(self, answerer) -> dict:
        from comd_jax.eval.image_reliance import image_reliance
        from comd_jax.checkpoints import load_model

        job = self.job
        scores = {}
        if multihost.is_writer():  # only process 0 talks to the endpoint
            result = teacher_heldout(job.config, self.teacher_checkpoint, self.spec,
                                     lambda: self._scores("teacher", answerer), job.workdir)
            scores = result["models"]["teacher"]["scores"]
        model = load_model(self.teacher_cfg, self.teacher_checkpoint, job.mesh, job.recipe)  # Orbax or transformers
        return {"scores": scores, "image_reliance": image_reliance(model, self._heldout(self.teacher_cfg), max_batches=None)}

    def student(self, round_index: int, student) -> dict:
        from comd_jax.eval.image_reliance import image_reliance

        label = "baseline" if round_index < 0 else f"after round {round_index}"
        answerer = student.answerer(round_index, progress=f"held-out: student {label}")
        result = self._scores("student", answerer)
        return {"scores": result["models"]["student"]["scores"],
                "image_reliance": image_reliance(answerer.model, self._heldout(student.cfg), max_batches=None)}


def teacher_heldout(config, teacher_ckpt: str, spec, evaluate, workdir: str) -> dict:
    """The teacher's held-out evaluation, computed once per teacher checkpoint, world and answer
    settings. A checkpoint the run trained is scored into a file beside its real folder: the runs
    of an ablation link the first run's teacher, so they share it (at 2700 held-out examples that
    saves minutes a run). A given teacher (a transformers directory, e.g. the package's) is
    never written beside: its file goes in WORKDIR/checkpoints."""
    if "://" in teacher_ckpt or not os.path.isdir(teacher_ckpt):  # an object store: no side files
        return evaluate()
    real = os.path.realpath(teacher_ckpt)
    steps = sorted((d, os.stat(os.path.join(real, d)).st_mtime_ns) for d in os.listdir(real) if d.isdigit())
    given = os.path.isfile(os.path.join(real, "config.json"))
    key = json.dumps({"checkpoint": real, "steps": steps, "spec": dataclasses.asdict(spec),
                      "limit": config.distill.eval_limit, "max_new_tokens": config.distill.answer_max_tokens,
                      **({"files": _sha256s(real)} if given else {})}, sort_keys=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    if given:
        os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
        path = os.path.join(workdir, "checkpoints", f"teacher_heldout_{name}.json")
    else:
        path = f"{real}_heldout_{name}.json"
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


def _sha256s(directory: str) -> dict:
    """A given teacher's identity: its manifest's sha256s when it has one (already verified), else
    its files' sizes and times (cheap; a changed file changes them)."""
    from comd_jax.distill import teacher_manifest

    manifest = os.path.join(directory, teacher_manifest.MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest) as f:
            return json.load(f)["files"]
    return {n: [os.stat(os.path.join(directory, n)).st_size, os.stat(os.path.join(directory, n)).st_mtime_ns]
            for n in sorted(os.listdir(directory)) if os.path.isfile(os.path.join(directory, n))}


def given_teacher_matches_world(job: Job, checkpoint: str) -> None:
    """An exported world teacher (the shipped one): its files' sha256 on load, then its world
    against this run's, before any compute that would be wasted on a mismatch."""
    from comd_jax.distill import teacher_manifest

    if "://" not in checkpoint and os.path.isfile(os.path.join(checkpoint, teacher_manifest.MANIFEST)):
        manifest = teacher_manifest.verify(checkpoint)
        teacher_manifest.check_world(manifest, job.config, job.data.tokenizer_dir)


def world_kind(job: Job) -> Kind:
    """The world's parts; trains (or restores) its teacher first."""
    from comd_jax.distill.augment import ProceduralAugmentor
    from comd_jax.distill.judges import WorldJudge

    config = job.config
    # A teacher of the user's (distill.teacher_checkpoint) stands in for the world's own.
    checkpoint, summaries = (config.distill.teacher_checkpoint, []) if config.distill.teacher_checkpoint \
        else train_teacher(job)
    given_teacher_matches_world(job, checkpoint)
    pool = WorldPool(os.path.join(stages_lib.world_dir(job.workdir), "llava"), config.distill.pool_size)
    spec = stages_lib.world_spec(config.data)
    return Kind(
        pool=pool, benchmarks={"world": WorldEvaluator(job, checkpoint)}, teacher_checkpoint=checkpoint,
        judges={"reference": lambda client: WorldJudge()},
        augmentors={"procedural": lambda client: ProceduralAugmentor(spec, pool.image_root,
                                                                    per_seed=config.distill.per_seed,
                                                                    seed=config.seed)},
        title="CoMD on the offline world: held-out scores by round",
        report={"teacher_stages": summaries})
