"""Train: `python -m comd_jax.train --config=configs/comd.py[:preset] --workdir=DIR [--config.a.b=value]`
(in a checkout also `python launch/train.py ...`).

Multi-host: the same command on every host; `--distributed=tpu` on TPU slices,
under SLURM's srun nothing more (or `--coordinator_address --num_processes
--process_id` anywhere). See launch/tpu/ and launch/gpu/.

Thin on purpose: it parses flags and calls the library. The config is locked,
so a mistyped override is an error that names the key.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from comd_jax import distributed
from comd_jax.cli import config_arg

config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:preset]).", lock_config=True)
flags.DEFINE_string("workdir", "workdir", "Checkpoints, metrics, the offline world and reports go here.")
# Multi-host start-up: --distributed, --coordinator_address, --num_processes, --process_id
# (comd_jax/distributed.py decides; the flags only carry the values).
distributed.define_flags()
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    from absl import logging

    from comd_jax import launcher

    config = flags.FLAGS.config
    workdir = launcher.start(config, flags.FLAGS.workdir)  # verbosity, the job, the workdir, the cache
    import comd_jax.run
    from comd_jax import pretrained

    # With init_from, the student's architecture is the checkpoint's; an override that disagrees is an error.
    changed = pretrained.adopt_architecture(config, config_flags.get_override_values(flags.FLAGS["config"]))
    if changed:
        logging.warning("config.model: %d field(s) taken from config.init_from's config.json:\n  %s",
                        len(changed), "\n  ".join(changed))
    from comd_jax import experiment

    config = experiment.validate(config)  # once, before any compute: a bad key is refused by name
    from comd_jax.serve.client import RequestRejected, TeacherUnavailable

    try:
        comd_jax.run.run(config, workdir)
    except (RequestRejected, TeacherUnavailable, ConnectionError) as e:
        # An endpoint's fault, not ours: its message and request id, without our stack. Every
        # finished item is on disk, so the same command resumes once the endpoint is fixed.
        sys.exit(f"train.py: stopped: {type(e).__name__}: {e}\n"
                 f"Everything finished so far is kept in {workdir}; fix the endpoint (or the request) and "
                 f"rerun the same command to resume.")


def run():
    """The command line: the config argument resolved, then absl's app."""
    app.run(main, argv=config_arg.resolve(sys.argv))
