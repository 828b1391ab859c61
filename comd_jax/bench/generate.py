"""Generation throughput: our engine vs transformers' PyTorch `generate`, same weights.

  python -m comd_jax.bench.generate [--preset=default] [--batches=1,8,32,128] [--prompt=32] [--new=64]
                                    [--rounds=3] [--peers=eager,compiled]

The config preset's teacher (random weights) is exported with `save_pretrained`
and loaded by `LlavaForConditionalGeneration`; every side decodes the same
equal-length text prompts greedily for exactly `--new` tokens (no EOS), after a
warm-up run (our compile; PyTorch's first-call costs). Peers:

- `eager`: transformers' `generate` with its default dynamic cache;
- `compiled`: the same with `cache_implementation="static"` and the forward under
  `torch.compile` (skipped, with the reason, where inductor cannot build here).

Per batch size the sides run interleaved, `--rounds` times, and the median tokens/s
of each is reported. The load average is printed at the start and the end: a figure
taken above 0.5 is not a quiet one. The ratio ours / eager at the largest batch is last.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time

import numpy as np

log = logging.getLogger(__name__)


class _NoText:
    """The engine's tokenizer slot when only token counts matter: no EOS, no text."""

    eos_token_id = None

    def decode(self, ids, **kw):
        return ""


def _teacher_config(preset: str):
    from comd_jax import config as config_lib

    return config_lib.model_config(config_lib.preset(preset).teacher)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class _Ours:
    name = "ours"

    def __init__(self, model, prompts: np.ndarray, new: int):
        from comd_jax.serve.engine import Engine, EngineConfig
        from comd_jax.serve.requests import Request
        from comd_jax.serve.sampling import SamplingParams

        b = len(prompts)
        self.engine = Engine(model, _NoText(), EngineConfig(max_batch=b, max_seq_len=prompts.shape[1] + new,
                                                            prefill_group=(1, 2, 4, 8, 16, 32, 64, 128)))
        self.requests = [Request(p, None, SamplingParams(max_tokens=new, temperature=0)) for p in prompts]
        self.engine.generate_batch(self.requests)  # compile

    def run(self) -> float:
        return _timed(lambda: self.engine.generate_batch(self.requests))

    def close(self):
        self.engine.shutdown()


class _Torch:
    def __init__(self, directory: str, prompts: np.ndarray, new: int, compiled: bool):
        import torch
        from transformers import LlavaForConditionalGeneration

        self.name = "transformers static+compile" if compiled else "transformers"
        self.torch = torch
        self.model = LlavaForConditionalGeneration.from_pretrained(directory).eval()
        ids = torch.from_numpy(prompts.astype(np.int64))
        self.kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, eos_token_id=None, pad_token_id=0)
        if compiled:
            self.kw["cache_implementation"] = "static"
            self.model.forward = torch.compile(self.model.forward, mode="reduce-overhead", fullgraph=False)
        self.run()  # warm-up (and torch.compile's compile)
        self.run()

    def run(self) -> float:
        with self.torch.inference_mode():
            return _timed(lambda: self.model.generate(**self.kw))

    def close(self):
        pass


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0] if names else platform.machine()
    except OSError:
        return platform.processor() or platform.machine()


def measure(model, directory: str, prompts: np.ndarray, new: int, rounds: int, peers) -> dict:
    """Median tokens/s per side, the sides interleaved round by round."""
    sides = [_Ours(model, prompts, new)]
    skipped = {}
    for peer in peers:
        try:
            sides.append(_Torch(directory, prompts, new, compiled=peer == "compiled"))
        except Exception as e:  # inductor needs a working C++ toolchain; say why, keep the rest
            skipped[peer] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    times = {s.name: [] for s in sides}
    for _ in range(rounds):
        for s in sides:
            times[s.name].append(s.run())
    for s in sides:
        s.close()
    b = len(prompts)
    return {"tok_s": {name: b * new / statistics.median(ts) for name, ts in times.items()}, "skipped": skipped}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default", help="configs/comd.py preset whose teacher is measured")
    parser.add_argument("--batches", default="1,8,32,128")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="generated tokens per row")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed runs per side (median reported)")
    parser.add_argument("--peers", default="eager,compiled", help="eager and/or compiled transformers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # others' INFO stays quiet
    log.setLevel(logging.INFO)
    from comd_jax.convert.hf import save_pretrained
    from comd_jax.models.build import build_model

    peers = [p for p in args.peers.split(",") if p]
    cfg = _teacher_config(args.preset)
    model = build_model(cfg, seed=0)
    rng = np.random.default_rng(0)
    log.info("machine: %s, %d CPUs; load average at start %s", _machine(), os.cpu_count(), _load())
    log.info("teacher of preset %r: hidden %d, %d layers, vocab %d; prompt %d tokens, %d new, greedy; "
                 "median of %d interleaved rounds", args.preset, cfg.text.hidden_size, cfg.text.num_layers,
                 cfg.text.vocab_size, args.prompt, args.new, args.rounds)
    ratio, b = None, None
    with tempfile.TemporaryDirectory() as directory:
        save_pretrained(model, directory)
        for b in map(int, args.batches.split(",")):
            prompts = rng.integers(5, cfg.text.vocab_size, (b, args.prompt)).astype(np.int32)
            out = measure(model, directory, prompts, args.new, args.rounds, peers)
            tok = out["tok_s"]
            ours = tok.pop("ours")
            cells = "   ".join(f"{name} {v:9.1f} tok/s (ours / it {ours / v:.2f})" for name, v in tok.items())
            log.info("batch %3d: ours %9.1f tok/s   %s", b, ours, cells)
            for peer, why in out["skipped"].items():
                log.info("batch %3d: peer %s skipped: %s", b, peer, why)
            if "transformers" in tok:
                ratio = ours / tok["transformers"]
    log.info("load average at end %s", _load())
    if ratio is not None:
        print(f"ratio at batch {b} (ours / transformers tokens/s): {ratio:.2f}")


if __name__ == "__main__":
    main()
