"""Train: `python launch/train.py --config=configs/comd.py[:preset] --workdir=DIR [--config.a.b=value]`.

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

config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:preset]).", lock_config=True)
flags.DEFINE_string("workdir", "workdir", "Checkpoints, metrics, the offline world and reports go here.")
# Multi-host start-up: --distributed, --coordinator_address, --num_processes, --process_id
# (comd_jax/distributed.py decides; the flags only carry the values).
distributed.define_flags()
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    from absl import logging

    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO; -v 0 brings it back
        logging.set_verbosity(logging.WARNING)
    # Before anything touches a JAX backend: joining the job fixes the global device list.
    distributed.initialize_from_flags()
    import comd_jax.run
    from comd_jax import compile_cache, paths, pretrained

    config = flags.FLAGS.config
    workdir = paths.startup(config, flags.FLAGS.workdir)  # Orbax refuses relative paths
    # With init_from, the student's architecture is the checkpoint's; an override that disagrees is an error.
    changed = pretrained.adopt_architecture(config, config_flags.get_override_values(flags.FLAGS["config"]))
    if changed:
        logging.warning("config.model: %d field(s) taken from config.init_from's config.json:\n  %s",
                        len(changed), "\n  ".join(changed))
    compile_cache.enable(config, workdir)  # before anything compiles
    from comd_jax.serve.client import RequestRejected, TeacherUnavailable

    try:
        comd_jax.run.run(config, workdir)
    except (RequestRejected, TeacherUnavailable, ConnectionError) as e:
        # An endpoint's fault, not ours: its message and request id, without our stack. Every
        # finished item is on disk, so the same command resumes once the endpoint is fixed.
        sys.exit(f"train.py: stopped: {type(e).__name__}: {e}\n"
                 f"Everything finished so far is kept in {workdir}; fix the endpoint (or the request) and "
                 f"rerun the same command to resume.")


if __name__ == "__main__":
    app.run(main)
