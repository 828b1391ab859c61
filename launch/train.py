"""Train: `python launch/train.py --config=configs/comd.py[:preset] --workdir=DIR [--config.a.b=value]`.

Multi-host: the same command on every host; `--distributed=tpu` on TPU slices,
under SLURM's srun nothing more (or `--coordinator_address --num_processes
--process_id` anywhere). See launch/tpu/ and launch/gpu/.

Thin on purpose: it parses flags and calls the library. The config is locked,
so a mistyped override is an error that names the key.
"""
# The command lives in the package (comd_jax/cli/train.py), so that an installed comd_jax has it:
# `python -m comd_jax.train` is the same command.
from comd_jax.cli.train import run

if __name__ == "__main__":
    run()
