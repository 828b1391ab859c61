"""Serve the teacher: `python launch/serve_teacher.py --config=configs/comd.py[:preset] --port=8000
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
# The command lives in the package (comd_jax/cli/serve.py), so that an installed comd_jax has it:
# `python -m comd_jax.serve` is the same command.
from comd_jax.cli.serve import run

if __name__ == "__main__":
    run()
