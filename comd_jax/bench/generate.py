"""Generation throughput: our engine vs transformers' PyTorch `generate`, same weights.

  python -m comd_jax.bench.generate [--preset=default] [--batches=1,8,32] [--prompt=32] [--new=64]

The config preset's teacher (random weights) is exported with `save_pretrained`
and loaded by `LlavaForConditionalGeneration`; both decode the same
equal-length text prompts greedily for exactly `--new` tokens (no EOS), after a
warm-up run (our compile; PyTorch's first-call costs). Prints tokens/s of
each per batch size, and the ratio ours/transformers at the largest batch last.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


class _NoText:
    """The engine's tokenizer slot when only token counts matter: no EOS, no text."""

    eos_token_id = None

    def decode(self, ids, **kw):
        return ""


def _teacher_config(preset: str):
    from comd_jax import config as config_lib

    return config_lib.model_config(config_lib.preset(preset).teacher)


def _ours(model, prompts: np.ndarray, new: int, repeats: int) -> float:
    from comd_jax.serve.engine import Engine, EngineConfig
    from comd_jax.serve.requests import Request
    from comd_jax.serve.sampling import SamplingParams

    b = len(prompts)
    engine = Engine(model, _NoText(), EngineConfig(max_batch=b, max_seq_len=prompts.shape[1] + new,
                                                   prefill_group=(1, 2, 4, 8, 16, 32, 64)))
    requests = [Request(p, None, SamplingParams(max_tokens=new, temperature=0)) for p in prompts]
    try:
        engine.generate_batch(requests)  # compile
        best = min(_timed(lambda: engine.generate_batch(requests)) for _ in range(repeats))
    finally:
        engine.shutdown()
    return b * new / best


def _torch(directory: str, prompts: np.ndarray, new: int, repeats: int) -> float:
    import torch
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(directory).eval()
    ids = torch.from_numpy(prompts.astype(np.int64))
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
              do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.inference_mode():
        model.generate(**kw)
        best = min(_timed(lambda: model.generate(**kw)) for _ in range(repeats))
    return len(prompts) * new / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default", help="configs/comd.py preset whose teacher is measured")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="generated tokens per row")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    from comd_jax.convert.hf import save_pretrained
    from comd_jax.models.build import build_model

    cfg = _teacher_config(args.preset)
    model = build_model(cfg, seed=0)
    rng = np.random.default_rng(0)
    print(f"teacher of preset {args.preset!r}: hidden {cfg.text.hidden_size}, {cfg.text.num_layers} layers, "
          f"vocab {cfg.text.vocab_size}; prompt {args.prompt} tokens, {args.new} new, greedy")
    ratio = None
    with tempfile.TemporaryDirectory() as directory:
        save_pretrained(model, directory)
        for b in map(int, args.batches.split(",")):
            prompts = rng.integers(5, cfg.text.vocab_size, (b, args.prompt)).astype(np.int32)
            ours = _ours(model, prompts, args.new, args.repeats)
            theirs = _torch(directory, prompts, args.new, args.repeats)
            ratio = ours / theirs
            print(f"batch {b:3d}: ours {ours:9.1f} tok/s   transformers {theirs:9.1f} tok/s   ratio {ratio:.2f}")
    print(f"ratio at batch {b} (ours / transformers tokens/s): {ratio:.2f}")


if __name__ == "__main__":
    main()
