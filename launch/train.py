"""Train: `python launch/train.py --config=configs/comd.py[:preset] --workdir=DIR [--config.a.b=value]`.

Thin on purpose: it parses flags and calls the library. The config is locked,
so a mistyped override is an error that names the key.
"""
from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:preset]).", lock_config=True)
flags.DEFINE_string("workdir", "workdir", "Checkpoints, metrics, the offline world and reports go here.")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    from absl import logging

    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO; -v 0 brings it back
        logging.set_verbosity(logging.WARNING)
    import comd_jax.run

    comd_jax.run.run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
