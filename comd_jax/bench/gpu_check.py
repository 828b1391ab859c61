"""One GPU (H100/H200): our train step of a ~1B-parameter LLaVA in bfloat16 vs transformers' PyTorch
LLaVA step on the same card, plus our generation tokens/s.

    python -m comd_jax.bench.gpu_check [--rounds=3 --steps=5 --batch=8 --seq_len=2048]
    python -m comd_jax.bench.gpu_check --tiny      # seconds on a CPU: the smoke test CI runs

Printed: our step time and MFU (model FLOPs as in train/flops.py over the
chip's dense bf16 peak from train/metrics.py), generation tokens/s (the serving
engine when present, else the in-repo greedy decoder), PyTorch's step time,
and last the ratio ours/PyTorch. Goals: MFU >= 45%, ratio >= 1.3.

Both sides: float32 master weights, bfloat16 compute (our `dtype`, torch
autocast), AdamW + clipping, vision tower frozen. Ours rematerializes each
layer (`remat=True`), PyTorch runs without checkpointing unless asked
(`--torch_checkpointing`): each side gets its faster setting that fits.
The weights start on the host: saved once in transformers format, the torch
side loads them in a child process (one framework per process, so neither
allocator squats on memory the other needs), then ours runs here.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from comd_jax.bench.train_step import Size

# ~1.1B in the LLM (TinyLlama-1.1B's shape: GQA, 22 layers) + CLIP ViT-L/14-336 (frozen).
ONE_B = Size(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32064, vision_hidden=1024,
             vision_layers=24, image_size=336, patch=14, images=1, batch=8, seq_len=2048)
TINY = Size(hidden=32, intermediate=64, layers=1, heads=2, kv_heads=1, vocab=64, vision_hidden=32,
            vision_layers=2, image_size=28, patch=14, images=1, batch=2, seq_len=16)
GOAL_MFU, GOAL_RATIO = 0.45, 1.3


class _NoText:
    """The engine wants a tokenizer only for EOS and decoded text; throughput needs neither."""

    eos_token_id = None

    def decode(self, ids, **kwargs) -> str:
        return ""


def _host_model(cfg):
    """Our randomly initialized model on the host CPU (no accelerator memory used)."""
    import jax

    from comd_jax import sharding as shd
    from comd_jax.models import build

    return build.build_model(cfg, mesh=shd.make_mesh((1, 1, 1), jax.devices("cpu")[:1]))


def _torch_side(model_dir: str, batch: dict, rounds: int, steps: int, fp32: bool, checkpointing: bool) -> dict:
    path = os.path.join(model_dir, "batch.npz")
    np.savez(path, **batch)
    cmd = [sys.executable, "-m", "comd_jax.bench.torch_peer", f"--model={model_dir}", f"--batch={path}",
           f"--rounds={rounds}", f"--steps={steps}"] + ["--fp32"] * fp32 + ["--checkpointing"] * checkpointing
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT=")][-1]
    return json.loads(line[len("RESULT="):])


def _our_step(cfg, params, batch: dict):
    """(run one step and block → loss, setup, holder of the state)."""
    import jax

    from comd_jax import sharding as shd
    from comd_jax.train.optim import OptimConfig
    from comd_jax.train.state import create_setup, init_state
    from comd_jax.train.step import batch_shardings, build_train_step, host_batch

    mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
    optim = OptimConfig(learning_rate=1e-4, warmup_ratio=0.0, schedule="constant", total_steps=10 ** 6)
    setup = create_setup(cfg, optim, mesh, "fsdp")
    holder = {"state": init_state(setup, params=jax.device_put(params, setup.state_shardings.params))}
    device_batch = jax.device_put(host_batch(batch, setup), batch_shardings(setup))
    rng = jax.random.key(0)
    compiled = build_train_step(setup, 1).lower(holder["state"], device_batch, rng).compile()

    def run() -> float:
        holder["state"], metrics = compiled(holder["state"], device_batch, rng)
        return float(metrics["loss"])  # fetching the loss waits for the step

    return run, setup, holder


def _generate_tokens_per_s(model, batch: dict, prompt_len: int, new_tokens: int) -> dict:
    """Decode throughput: every row generates `new_tokens` tokens (no EOS) after its prompt."""
    import time

    ids = np.asarray(batch["input_ids"])[:, :prompt_len]
    pixels = np.asarray(batch["pixel_values"])
    rows = ids.shape[0]
    try:
        from comd_jax.serve.engine import Engine, EngineConfig
        from comd_jax.serve.requests import Request
        from comd_jax.serve.sampling import SamplingParams
    except ImportError:
        Engine = None
    if Engine is not None:
        engine = Engine(model, _NoText(), EngineConfig(max_batch=rows, max_seq_len=prompt_len + new_tokens))
        params = SamplingParams(max_tokens=new_tokens, temperature=0.0)
        requests = [Request(ids[i], pixels[i], params) for i in range(rows)]
        try:
            engine.generate_batch(requests)  # compiles
            start = time.perf_counter()
            out = engine.generate_batch(requests)
            elapsed = time.perf_counter() - start
        finally:
            engine.shutdown()
        return {"by": "serve.Engine", "tokens_per_s": sum(len(r.token_ids) for r in out) / elapsed}
    from comd_jax.models.generate import greedy_generate

    flat_px = pixels.reshape(-1, *pixels.shape[2:])
    greedy_generate(model, ids, flat_px, max_new_tokens=new_tokens)  # compiles
    start = time.perf_counter()
    out = greedy_generate(model, ids, flat_px, max_new_tokens=new_tokens)
    return {"by": "models.generate.greedy_generate", "tokens_per_s": out.size / (time.perf_counter() - start)}


def run(size: Size = ONE_B, rounds: int = 3, steps: int = 5, tiny: bool = False, gen_tokens: int = 128,
        torch_checkpointing: bool = False) -> dict:
    import jax
    from flax import nnx

    from comd_jax.bench import timing, train_step
    from comd_jax.train import flops
    from comd_jax.convert.hf import save_pretrained
    from comd_jax.train.metrics import device_peak_flops

    dtype = "float32" if tiny else "bfloat16"  # tiny: float32, so both first losses agree tightly
    cfg = train_step.model_config(size, dtype=dtype, remat=not tiny)
    batch = train_step.make_batch(size, cfg)
    host = _host_model(cfg)
    params = nnx.state(host).to_pure_dict()
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(host, tmp)
        del host
        theirs = _torch_side(tmp, batch, rounds, steps, fp32=tiny, checkpointing=torch_checkpointing)
    ours, setup, holder = _our_step(cfg, params, batch)
    del params
    first = ours()
    times = timing.interleaved_rounds({"ours": ours}, rounds, steps)["ours"]
    model_flops = flops.train_step_flops(cfg, size.batch, size.seq_len, size.images)["total"]
    peak = device_peak_flops()
    prompt_len = 1 + size.images * cfg.num_image_tokens + min(64, size.seq_len // 4)
    gen = _generate_tokens_per_s(setup.model(holder["state"].params), batch, prompt_len,
                                 4 if tiny else gen_tokens)
    out = {"device": jax.devices()[0].device_kind, "params": n_params, "size": dataclasses.asdict(size),
           "dtype": dtype, "model_flops": model_flops, "first_loss": {"ours": first, "torch": theirs.get("first_loss")},
           "ours": times, "mfu": model_flops / times["best"] / peak if peak else None, "generation": gen,
           "torch": theirs, "tokens": size.batch * size.seq_len}
    out["ratio"] = theirs["best"] / times["best"] if "best" in theirs else None
    return out


def report(r: dict) -> None:
    tokens = r["tokens"]
    print(f"device          {r['device']}; {r['params'] / 1e9:.2f}B parameters; {r['dtype']} compute; "
          f"{r['model_flops'] / 1e12:.2f} TFLOP/step; {tokens} tokens/step")
    print(f"first loss      ours {r['first_loss']['ours']:.5f}   torch {r['first_loss']['torch']}")
    t = r["ours"]
    mfu = "n/a (unknown peak for this device)" if r["mfu"] is None else \
        f"{100 * r['mfu']:.1f}% (goal >= {100 * GOAL_MFU:.0f}%: {'met' if r['mfu'] >= GOAL_MFU else 'NOT met'})"
    print(f"ours step       best {t['best'] * 1e3:8.1f} ms  median {t['median'] * 1e3:8.1f} ms  "
          f"{tokens / t['best']:9.0f} tokens/s  MFU {mfu}")
    g = r["generation"]
    print(f"generation      {g['tokens_per_s']:.0f} tokens/s ({g['by']})")
    th = r["torch"]
    if "best" in th:
        print(f"torch step      best {th['best'] * 1e3:8.1f} ms  median {th['median'] * 1e3:8.1f} ms  "
              f"{tokens / th['best']:9.0f} tokens/s  (torch {th['torch']}, peak {th['peak_bytes'] / 2**30:.1f} GiB)")
        verdict = "met" if r["ratio"] >= GOAL_RATIO else "NOT met"
        print(f"ratio (ours/torch step speed): {r['ratio']:.3f} (goal >= {GOAL_RATIO}: {verdict})")
    else:
        print(f"torch step      failed: {th['error']}  (try --torch_checkpointing when out of memory)")
        print("ratio (ours/torch step speed): n/a")


def main(argv=None) -> None:
    # Grow JAX's GPU pool on demand instead of taking 75% up front: the torch child needs the card first.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a trivial size in float32 (CPU smoke test)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--gen_tokens", type=int, default=128, help="new tokens per row for generation")
    parser.add_argument("--torch_checkpointing", action="store_true")
    for field in ("batch", "seq_len"):
        parser.add_argument(f"--{field}", type=int, default=None)
    args = parser.parse_args(argv)
    size = TINY if args.tiny else ONE_B
    size = dataclasses.replace(size, **{k: getattr(args, k) for k in ("batch", "seq_len") if getattr(args, k)})
    print(f"size: {size}")
    report(run(size, args.rounds, args.steps, args.tiny, args.gen_tokens, args.torch_checkpointing))


if __name__ == "__main__":
    main()
