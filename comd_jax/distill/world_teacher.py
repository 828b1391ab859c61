"""The offline world's teacher as a shipped, given model, the way a user's LLaVA-13B is one.

It is trained once by `configs/comd.py:teacher` and exported here as a transformers LLaVA
directory (safetensors, tokenizer, image processor, LlavaProcessor settings) with a manifest,
`world_teacher.json`: every file's sha256, the world the teacher was trained on (seed, image
and patch size, the tokenizer's sha256), how it was built and what it scores.

- `export(config, workdir, out_dir)` writes the directory from a finished run; `measure`
  scores the written files (held-out per skill, image reliance) for the manifest.
- `verify` and `check_world` (`teacher_manifest`, which every run that loads the teacher uses).
"""
from __future__ import annotations

import json
import os
import shutil
import sys

# The manifest's checks, here too for the CLI and the configs.
from comd_jax.distill.teacher_manifest import MANIFEST, SHIPPED, check_world, sha256_of, verify, world_of  # noqa: F401


def export(config, workdir: str, out_dir: str) -> dict:
    """The finished teacher of a `configs/comd.py:teacher` run in `workdir` → `out_dir`."""
    from comd_jax import config as config_lib
    from comd_jax.convert.hf import save_pretrained
    from comd_jax.job import Job
    from comd_jax.checkpoints import load_model

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
    from comd_jax.job import Job
    from comd_jax.distill.offline import WorldEvaluator
    from comd_jax.eval.loading import make_answerer

    job = Job.start(config, workdir)
    answerer = make_answerer(config, config.teacher, directory, workdir,
                             max_new_tokens=config.distill.answer_max_tokens, batch_size=config.distill.gen_batch)
    result = WorldEvaluator(job, directory).teacher(answerer)
    return {"heldout": result["scores"], "image_reliance": result["image_reliance"],
            "eval_limit": config.distill.eval_limit}


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

    from comd_jax import configs

    config_flags.DEFINE_config_file("config", f"{configs.COMD}:teacher", "The teacher's config (path[:preset]).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "The finished configs/comd.py:teacher run.")
    flags.DEFINE_string("out", SHIPPED, "Where the transformers directory goes (default: the package's).")
    flags.mark_flags_as_required(["workdir"])
    from comd_jax.cli import config_arg

    app.run(main, argv=config_arg.resolve(sys.argv))
