"""Train: `python launch/train.py --config=configs/comd.py[:preset] --workdir=DIR [--config.a.b=value]`.

The checkout's name for `python -m comd_jax.train` (comd_jax/cli/train.py: flags, multi-host).
"""
from comd_jax.cli.train import run

if __name__ == "__main__":
    run()
