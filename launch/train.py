"""Train: `python launch/train.py --config=configs/comd.py[:preset] --workdir=DIR [--config.a.b=value]`.

Multi-host: the same command on every host; `--distributed=tpu` on TPU slices,
under SLURM's srun nothing more (or `--coordinator_address --num_processes
--process_id` anywhere). See launch/tpu/ and launch/gpu/.

Thin on purpose: it parses flags and calls the library. The config is locked,
so a mistyped override is an error that names the key.
"""
from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:preset]).", lock_config=True)
flags.DEFINE_string("workdir", "workdir", "Checkpoints, metrics, the offline world and reports go here.")
# Multi-host start-up (comd_jax/distributed.py decides; these only carry the values).
flags.DEFINE_enum("distributed", "auto", ["auto", "none", "tpu", "slurm", "flags"],
                  "How processes join: auto (flags, else SLURM, else a multi-host TPU slice, else one "
                  "process), tpu (jax.distributed.initialize() from TPU metadata), slurm, flags, none.")
flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0 (GPU clusters).")
flags.DEFINE_integer("num_processes", 0, "Processes in the job (0: from SLURM).")
flags.DEFINE_integer("process_id", -1, "This process's index (-1: from SLURM).")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    from absl import logging

    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO; -v 0 brings it back
        logging.set_verbosity(logging.WARNING)
    from comd_jax import distributed

    # Before anything touches a JAX backend: joining the job fixes the global device list.
    f = flags.FLAGS
    plan = distributed.initialize(distributed.plan(f.distributed, f.coordinator_address, f.num_processes,
                                                   f.process_id))
    if plan.kind != "single":
        logging.warning(plan.describe())
    import comd_jax.run

    comd_jax.run.run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
