"""Serve the teacher: `python -m comd_jax.serve --config=configs/comd.py[:preset] --port=8000
[--host=127.0.0.1] [--checkpoint=DIR] [--api-key=KEY] [--workdir=DIR] [--model_name=NAME]`.

Thin on purpose: parses flags and calls `comd_jax.serve.loading.serve`. The model is
`config.teacher`; `--checkpoint` takes a transformers-format directory or one of our
Orbax checkpoints (a stage directory or a step); without it the weights are random
(tests, load checks). Binds 127.0.0.1 unless --host says otherwise.

One process, one host: the teacher is sharded over config.mesh on this host's
devices. It takes launch/train.py's start-up flags (--distributed,
--coordinator_address, --num_processes, --process_id) so a job script can pass
the same ones everywhere, but refuses a plan of more than one process: the
engine's continuous batching is decided by the one process that holds the HTTP
port, and processes on other hosts would have to replay each of its batches in
lockstep to run the sharded model collectively, which the engine does not do.
Serve a teacher too large for one host's devices from elsewhere (any
OpenAI-compatible server, `config.distill.teacher_url`).
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from comd_jax import distributed
from comd_jax.cli import config_arg

config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:preset]).", lock_config=True)
flags.DEFINE_string("host", "127.0.0.1", "Interface to bind (0.0.0.0 exposes the server to the network).")
flags.DEFINE_integer("port", 8000, "TCP port.")
flags.DEFINE_string("checkpoint", None, "transformers directory or Orbax checkpoint; none = random weights.")
flags.DEFINE_string("api_key", None, "When set, requests need 'Authorization: Bearer KEY'. Visible to anyone "
                    "running ps: prefer --api_key_env.")
flags.DEFINE_string("api_key_env", "", "Name of an environment variable holding the key (as --api_key, "
                    "but off the command line). It must be set and non-empty.")
flags.DEFINE_string("workdir", "workdir", "Where the offline world (tokenizer, image processor) lives.")
flags.DEFINE_string("model_name", "comd-teacher", "The model id clients pass and /v1/models lists.")
flags.DEFINE_bool("warm_up", False, "Compile every shape the server's limits allow before serving (minutes on a "
                  "CPU; then no request waits on a compile, and /health counts any compile since).")
distributed.define_flags()  # --distributed, --coordinator_address, --num_processes, --process_id
flags.mark_flags_as_required(["config"])


def single_process_plan(flag_values=None) -> distributed.Plan:
    """The start-up plan, refused (SystemExit) when it joins more than one process."""
    plan = distributed.plan_from_flags(flag_values)
    if distributed.multiprocess(plan):
        raise SystemExit(
            f"the teacher server serves from one process on one host; got {plan.describe()}. Run it on one "
            "host only (config.mesh spreads the teacher over that host's devices), with --distributed=none "
            "if SLURM or TPU variables in the environment suggest a multi-host job. A multi-host server "
            "would need every process to replay process 0's batches, which the engine does not do.")
    return plan


def main(argv):
    del argv
    from comd_jax import launcher, paths
    from comd_jax.serve.loading import serve

    F = flags.FLAGS
    # One process only; the server's own INFO log stays on.
    workdir = launcher.start(F.config, F.workdir, plan=single_process_plan(), quiet=False)
    from comd_jax import experiment

    serve(experiment.validate(F.config), host=F.host, port=F.port, checkpoint=paths.absolute(F.checkpoint), api_key=api_key(F),
          workdir=workdir, model_name=F.model_name, warm_up=F.warm_up)


def api_key(F):
    if not F.api_key_env:
        return F.api_key
    if F.api_key:
        raise SystemExit("give --api_key or --api_key_env, not both")
    key = os.environ.get(F.api_key_env, "")
    if not key:
        raise SystemExit(f"--api_key_env={F.api_key_env}: that environment variable is not set or empty")
    return key


def run():
    """The command line: the config argument resolved, then absl's app."""
    # The spelling --api-key, beside absl's --api_key.
    sys.argv = ["--api_key" + a[len("--api-key"):] if a.startswith("--api-key") else a for a in sys.argv]
    app.run(main, argv=config_arg.resolve(sys.argv))
