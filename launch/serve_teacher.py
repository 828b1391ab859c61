"""Serve the teacher: `python launch/serve_teacher.py --config=configs/comd.py[:preset] --port=8000
[--host=127.0.0.1] [--checkpoint=DIR] [--api-key=KEY] [--workdir=DIR] [--model_name=NAME]`.

Thin on purpose: parses flags and calls `comd_jax.serve.loading.serve`. The model is
`config.teacher`; `--checkpoint` takes a transformers-format directory or one of our
Orbax checkpoints (a stage directory or a step); without it the weights are random
(tests, load checks). Binds 127.0.0.1 unless --host says otherwise.
"""
from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:preset]).", lock_config=True)
flags.DEFINE_string("host", "127.0.0.1", "Interface to bind (0.0.0.0 exposes the server to the network).")
flags.DEFINE_integer("port", 8000, "TCP port.")
flags.DEFINE_string("checkpoint", None, "transformers directory or Orbax checkpoint; none = random weights.")
flags.DEFINE_string("api_key", None, "When set, requests need 'Authorization: Bearer KEY'.")
flags.DEFINE_string("workdir", "workdir", "Where the offline world (tokenizer, image processor) lives.")
flags.DEFINE_string("model_name", "comd-teacher", "The model id clients pass and /v1/models lists.")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    from comd_jax.serve.loading import serve

    F = flags.FLAGS
    serve(F.config, host=F.host, port=F.port, checkpoint=F.checkpoint, api_key=F.api_key, workdir=F.workdir,
          model_name=F.model_name)


if __name__ == "__main__":
    import sys

    # The spelling --api-key, beside absl's --api_key.
    sys.argv = ["--api_key" + a[len("--api-key"):] if a.startswith("--api-key") else a for a in sys.argv]
    app.run(main)
