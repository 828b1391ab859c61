"""Evaluate: `python -m comd_jax.eval --config=configs/comd.py[:preset] --checkpoint=DIR --benchmark=NAME
[--output=DIR]` (in a checkout also `python launch/eval.py ...`).

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
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from comd_jax import distributed
from comd_jax.cli import config_arg

config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:preset]).", lock_config=True)
flags.DEFINE_string("checkpoint", None, "Orbax stage checkpoint dir or transformers-format dir (student).")
flags.DEFINE_string("benchmark", "world", "world | scienceqa | judged | llava_bench")
flags.DEFINE_string("output", "eval", "Results folder (JSON + markdown).")
flags.DEFINE_string("teacher_checkpoint", "", "Optional teacher checkpoint, scored alongside (config.teacher).")
flags.DEFINE_string("workdir", "", "Training workdir (the offline world lives there); default: from --checkpoint.")
flags.DEFINE_string("question_file", "", "ScienceQA: LLaVA-format question file (e.g. llava_test_CQM-A.json).")
flags.DEFINE_string("problems_file", "", "ScienceQA: problems.json (answers, subjects, grades, contexts).")
flags.DEFINE_string("image_folder", "", "Folder the question files' image paths are relative to.")
flags.DEFINE_string("bench_questions", "", "Judged: questions JSONL (question_id, image, text, category).")
flags.DEFINE_string("bench_answers", "", "Judged: reference answers JSONL (question_id, text).")
flags.DEFINE_string("bench_context", "", "Judged: optional context JSONL (image, caption) for the judge.")
flags.DEFINE_string("judge_url", "", "Judged: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
flags.DEFINE_string("judge_model", "", "Judged: model name sent to the judge endpoint.")
flags.DEFINE_string("judge_api_key_env", "OPENAI_API_KEY", "Judged: environment variable holding the API key.")
flags.DEFINE_bool("judge_swap", False, "Judged: also judge with the answers swapped and average.")
flags.DEFINE_integer("limit", None, "Only the first N questions.")
flags.DEFINE_integer("max_new_tokens", 64, "Generation length.")
flags.DEFINE_integer("batch_size", 8, "Generation batch.")
distributed.define_flags()  # --distributed, --coordinator_address, --num_processes, --process_id
flags.mark_flags_as_required(["config", "checkpoint"])


def main(argv):
    del argv
    from comd_jax import launcher

    f = flags.FLAGS
    workdir = launcher.start(f.config, f.workdir)  # verbosity, the job, the workdir, the cache
    from comd_jax import experiment, multihost, paths

    config = experiment.validate(f.config)  # once, before any compute: a bad key is refused by name
    from comd_jax.eval.loading import evaluate_checkpoint
    from comd_jax.eval.suite import EvalSettings

    a = paths.absolute  # Orbax refuses relative paths; every local path is made absolute once, here
    settings = EvalSettings(
        question_file=a(f.question_file), problems_file=a(f.problems_file), image_folder=a(f.image_folder),
        bench_questions=a(f.bench_questions), bench_answers=a(f.bench_answers), bench_context=a(f.bench_context),
        judge_url=f.judge_url, judge_model=f.judge_model, judge_api_key=os.environ.get(f.judge_api_key_env, ""),
        judge_swap=f.judge_swap, limit=f.limit)
    result = evaluate_checkpoint(config, a(f.checkpoint), f.benchmark, a(f.output), settings,
                                 teacher_checkpoint=a(f.teacher_checkpoint), workdir=workdir,
                                 max_new_tokens=f.max_new_tokens, batch_size=f.batch_size)
    from comd_jax.eval.report import result_markdown

    if multihost.is_writer():
        print(result_markdown(result))


def run():
    """The command line: the config argument resolved, then absl's app."""
    app.run(main, argv=config_arg.resolve(sys.argv))
