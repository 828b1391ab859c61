"""Evaluate: `python launch/eval.py --config=configs/comd.py[:preset] --checkpoint=DIR --benchmark=NAME [--output=DIR]`.

DIR: an Orbax stage checkpoint (WORKDIR/checkpoints/<stage>[/<step>]) or a
transformers-format directory. NAME: world (offline default: per-skill scores
plus a ScienceQA-style accuracy), scienceqa (--question_file, --problems_file,
--image_folder), judged / llava_bench (--bench_questions, --bench_answers,
[--bench_context], --judge_url, --judge_model). Writes NAME.json and NAME.md
into --output. Thin on purpose: flags in, one library call.

Multi-host (a model sharded over several hosts): the same command on every host,
with the same start-up flags as launch/train.py (--distributed, or
--coordinator_address --num_processes --process_id; under SLURM's srun nothing
more). The model is then placed on config.mesh over every host's devices and
every process runs the generation (it is collective); only process 0 calls the
judge endpoint, writes --output and prints the table. --output must be a
filesystem path (process 0 writes it).
"""
# The command lives in the package (comd_jax/cli/eval.py), so that an installed comd_jax has it:
# `python -m comd_jax.eval` is the same command.
from comd_jax.cli.eval import run

if __name__ == "__main__":
    run()
