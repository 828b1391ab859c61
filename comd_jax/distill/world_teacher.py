"""The offline world's teacher as a shipped, given model, the way a user's LLaVA-13B is one.

It is trained once by `configs/comd.py:teacher` and exported here as a transformers LLaVA
directory (safetensors, tokenizer, image processor, LlavaProcessor settings) with a manifest,
`world_teacher.json`: every file's sha256, the world the teacher was trained on (seed, image
and patch size, the tokenizer's sha256), how it was built and what it scores.

- `export(config, workdir, out_dir)` writes the directory from a finished run; `measure`
  scores the written files (held-out per skill, image reliance) for the manifest.
- `verify(directory)` checks every file against the manifest and returns the manifest.
- `check_world(manifest, config, tokenizer_dir)` refuses a run whose world is not the
  teacher's: a different tokenizer would silently mis-tokenize every prompt the teacher sees.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

MANIFEST = "world_teacher.json"
SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "world_teacher")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def world_of(config, tokenizer_dir: str) -> dict:
    """What a teacher's prompts depend on: the world's seed and image size, the patch size, and
    the exact tokenizer."""
    d, vision = config.data, config.teacher.vision
    return {"world_seed": d.world_seed, "image_size": d.image_size, "patch_size": vision.patch_size,
            "image_token_id": config.teacher.image_token_id,
            "tokenizer_sha256": sha256_of(os.path.join(tokenizer_dir, "tokenizer.json"))}


def export(config, workdir: str, out_dir: str) -> dict:
    """The finished teacher of a `configs/comd.py:teacher` run in `workdir` → `out_dir`."""
    from comd_jax import config as config_lib
    from comd_jax.convert.hf import save_pretrained
    from comd_jax.distill.job import Job
    from comd_jax.serve.loading import load_model

    job = Job.start(config, workdir)  # the run's mesh and world (already built: only read here)
    checkpoint = os.path.join(workdir, "checkpoints", config.stages[-1])
    model = load_model(config_lib.model_config(config.model), checkpoint, job.mesh, job.recipe)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    save_pretrained(model, out_dir)
    tokenizer_dir = job.data.tokenizer_dir
    for name in sorted(os.listdir(tokenizer_dir)):
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:  # as the world writes its own
        f.write(json.dumps(job.data.image_processor.to_transformers_dict(), indent=2))
    files = {name: sha256_of(os.path.join(out_dir, name)) for name in sorted(os.listdir(out_dir))}
    manifest = {"built_by": "python launch/train.py --config=configs/comd.py:teacher --workdir=DIR",
                "world": world_of(config, tokenizer_dir),
                "stages": {s: config[s].total_steps for s in config.stages},
                "scores": {}, "files": files}
    with open(os.path.join(out_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def measure(config, workdir: str, directory: str) -> dict:
    """The exported teacher's held-out scores (per skill and mean, `distill.eval_limit` examples)
    and image reliance, through the world evaluator every CoMD run uses, in process."""
    from comd_jax.distill.job import Job
    from comd_jax.distill.offline import WorldEvaluator
    from comd_jax.eval.loading import make_answerer

    job = Job.start(config, workdir)
    answerer = make_answerer(config, config.teacher, directory, workdir,
                             max_new_tokens=config.distill.answer_max_tokens, batch_size=config.distill.gen_batch)
    result = WorldEvaluator(job, directory).teacher(answerer)
    return {"heldout": result["scores"], "image_reliance": result["image_reliance"],
            "eval_limit": config.distill.eval_limit}


def verify(directory: str = SHIPPED) -> dict:
    """The manifest, once every file it lists is there with its sha256 (an error names the file)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory}: no {MANIFEST}; not an exported world teacher")
    with open(path) as f:
        manifest = json.load(f)
    for name, want in manifest["files"].items():
        file = os.path.join(directory, name)
        if not os.path.exists(file):
            raise FileNotFoundError(f"{file}: missing from the world teacher ({MANIFEST} lists it)")
        got = sha256_of(file)
        if got != want:
            raise ValueError(f"{file}: sha256 {got} is not the {want} that {MANIFEST} records; the file "
                             "changed (a partial copy, a Git LFS pointer, an edit): restore it or rebuild "
                             "the teacher with configs/comd.py:teacher")
    return manifest


def check_world(manifest: dict, config, tokenizer_dir: str, where: str = "config.distill.teacher_checkpoint"):
    """Refuses, naming each field, a run whose world the teacher was not trained on."""
    ours, theirs = world_of(config, tokenizer_dir), manifest["world"]
    wrong = [f"{k}: the teacher's {theirs[k]!r}, this run's {ours[k]!r}" for k in theirs if ours.get(k) != theirs[k]]
    if wrong:
        raise ValueError(f"{where}: this teacher was trained on another world ({'; '.join(wrong)}). Use the "
                         "world it was trained on (configs/comd.py's default data), or rebuild it with "
                         "configs/comd.py:teacher")


def main(argv) -> None:
    from absl import flags

    F = flags.FLAGS
    export_and_measure(F.config, os.path.abspath(F.workdir), os.path.abspath(F.out))


def export_and_measure(config, workdir: str, out: str) -> dict:
    """`export`, then `measure` the written files and record the scores in the manifest."""
    manifest = export(config, workdir, out)
    size = sum(os.path.getsize(os.path.join(out, n)) for n in manifest["files"])
    print(f"{out}: {len(manifest['files'])} files, {size / 2**20:.1f} MiB", flush=True)
    manifest["scores"] = measure(config, workdir, out)  # what the shipped files score, not the checkpoint
    with open(os.path.join(out, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
    print(json.dumps(manifest["scores"], indent=1))
    return manifest


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", "configs/comd.py:teacher", "The teacher's config (path[:preset]).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "The finished configs/comd.py:teacher run.")
    flags.DEFINE_string("out", SHIPPED, "Where the transformers directory goes (default: the package's).")
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
