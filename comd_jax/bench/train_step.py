"""Our train step vs transformers' PyTorch LLaVA train step, same tiny model, same batch, CPU.

    python -m comd_jax.bench.train_step [--rounds=5 --steps=3 --hidden=512 ...]

Prints tokens/s of each, our model-FLOP throughput as a share of the machine's
float32 matmul peak (measured in the same run), and — last — the ratio
ours/torch. Both sides: float32, AdamW + global-norm clipping, the vision tower
frozen, projector and LLM trained; the torch model is loaded from our own
`save_pretrained` output so the first losses must agree.

Timing: the two steps alternate in rounds and the best round counts (see
timing.py). On a machine shared with other work, wall time mostly measures the
neighbours; the CPU-time figures (process CPU seconds per step, and the peak
as FLOP per CPU-second) are printed alongside as the contention-robust view.
Our layers are unrolled by default (`--scan` to compare): faster on CPU at this
depth. Our step keeps only the positions that predict a target for its last
block's queries and MLP and for the LM head, as a stage with
`head_capacity_steps=8` trains (`--full_head`: every position, the trainer's
default and transformers' only way).

`--kd=topk` (or `on_policy`) times instead our step with and without the teacher's top-k KL
(train/kd.py, k = `--kd_k`, every target position scored), interleaved, and prints last
the KD step's time over the plain step's: what white-box distillation costs a step.

The share of the matmul peak is model-FLOP utilization as PaLM defines it: the
model's FLOPs per step (the same count for both sides, whatever work an
implementation skips) over step time. Ours is also printed on the FLOPs it
actually does, which is the kernels' efficiency.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import numpy as np


@dataclasses.dataclass(frozen=True)
class Size:
    """A tiny LLaVA where matmuls dominate (hidden 512, 4 layers, seq 256, one image per sample)."""

    hidden: int = 512
    intermediate: int = 1536
    layers: int = 4
    heads: int = 8
    kv_heads: int = 8
    vocab: int = 8192
    vision_hidden: int = 256
    vision_layers: int = 3  # feature layer -2: two run
    image_size: int = 112
    patch: int = 14
    images: int = 1  # per sample
    batch: int = 4
    seq_len: int = 256


def model_config(size: Size, **overrides):
    from comd_jax.models.config import DecoderConfig, VisionConfig, VLMConfig

    text = DecoderConfig(vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.intermediate,
                         num_layers=size.layers, num_heads=size.heads, num_kv_heads=size.kv_heads,
                         max_position_embeddings=max(size.seq_len, 512))
    vision = VisionConfig(hidden_size=size.vision_hidden, intermediate_size=4 * size.vision_hidden,
                          num_layers=size.vision_layers, num_heads=max(size.vision_hidden // 64, 1),
                          image_size=size.image_size, patch_size=size.patch)
    return VLMConfig(text=text, vision=vision, projector="mlp2x_gelu", image_token_id=size.vocab - 1,
                     **overrides)


def make_batch(size: Size, cfg, seed: int = 0) -> dict:
    """Each row: BOS, its images' placeholder tokens, a prompt, then an answer that
    carries the loss; a quarter of the rows end in right padding."""
    rng = np.random.default_rng(seed)
    b, t = size.batch, size.seq_len
    ids = rng.integers(2, size.vocab - 1, (b, t)).astype(np.int32)
    ids[:, 0] = 1
    n_img = size.images * cfg.num_image_tokens
    ids[:, 1:1 + n_img] = cfg.image_token_id
    mask = np.ones((b, t), np.int32)
    mask[::4, -t // 8:] = 0
    answer_start = 1 + n_img + (t - n_img) // 4
    loss = ((np.arange(t) >= answer_start)[None] & (mask == 1)).astype(np.float32)
    px = rng.normal(size=(b, size.images, size.image_size, size.image_size, 3)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss, "pixel_values": px}


def with_teacher_scores(batch: dict, vocab: int, k: int, seed: int = 1) -> dict:
    """The batch with a random teacher's top-k scores at every target position (float16, as stored)."""
    rng = np.random.default_rng(seed)
    b, t = batch["input_ids"].shape
    ids = np.stack([rng.choice(vocab, k, replace=False) for _ in range(b * t)]).reshape(b, t, k).astype(np.int32)
    logp = np.sort(np.log(rng.dirichlet(np.ones(k * 2), b * t)[:, :k]), axis=-1)[:, ::-1].reshape(b, t, k)
    return {**batch, "kd_ids": ids, "kd_logp": logp.astype(np.float16), "kd_mask": batch["loss_mask"].copy()}


def build_ours(cfg, batch: dict, seed: int = 0, full_head: bool = False, kd=None):
    """(run one step and block → loss, holder of the train state, setup, compiled step, batch as fed).

    Ours runs the LM head only at the positions that predict a target (train/targets.py;
    a stage opts in with head_capacity_steps); `full_head`: at every position, as the
    trainer does by default and transformers always does."""
    import jax

    from comd_jax import sharding as shd
    from comd_jax.train.optim import OptimConfig
    from comd_jax.train.state import create_setup, init_state
    from comd_jax.train.step import batch_shardings, build_train_step, host_batch
    from comd_jax.train.targets import CAPACITY_STEPS

    mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
    optim = OptimConfig(learning_rate=1e-4, warmup_ratio=0.0, schedule="constant", total_steps=10 ** 6)
    setup = create_setup(cfg, optim, mesh, "fsdp")
    holder = {"state": init_state(setup, seed)}
    fed = host_batch(batch, setup, capacity_steps=0 if full_head else CAPACITY_STEPS, kd=kd)
    device_batch = jax.device_put(fed, batch_shardings(setup, kd))
    step = build_train_step(setup, 1, kd=kd)
    rng = jax.random.key(0)
    compiled = step.lower(holder["state"], device_batch, rng).compile()

    def run() -> float:
        holder["state"], metrics = compiled(holder["state"], device_batch, rng)
        jax.block_until_ready(holder["state"])
        return float(metrics["loss"])

    return run, holder, setup, compiled, fed


def build_torch(setup, params, batch: dict, threads: int):
    import torch

    from comd_jax.bench import torch_llava
    from comd_jax.convert.hf import save_pretrained

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(setup.model(params), tmp)
        model = torch_llava.load_model(tmp)
    step = torch_llava.make_step(model, lr=1e-4)
    inputs = torch_llava.to_torch_batch(batch)
    return lambda: step(inputs)


def run(size: Size = Size(), rounds: int = 5, steps: int = 3, peak_n: int = 2048, full_head: bool = False,
        **model_overrides) -> dict:
    """Measure both steps; returns the numbers `main` prints (used by tests at tiny sizes)."""
    import jax

    from comd_jax.bench import timing
    from comd_jax.train import flops

    load_before = os.getloadavg()[0]
    cfg = model_config(size, **model_overrides)
    batch = make_batch(size, cfg)
    ours, holder, setup, compiled, fed = build_ours(cfg, batch, full_head=full_head)
    theirs = build_torch(setup, holder["state"].params, batch, threads=os.cpu_count() or 1)
    first = {"ours": ours(), "torch": theirs()}  # warm-up; same weights, so the losses agree
    meter = timing.MatmulPeak(peak_n)
    times = timing.interleaved_rounds({"ours": ours, "torch": theirs}, rounds, steps, between=meter.measure)
    meter.measure(10)
    peak = {"wall": meter.wall, "cpu": meter.cpu}
    model_flops = flops.train_step_flops(cfg, size.batch, size.seq_len, size.images)["total"]
    # What ours actually computes, beside the model FLOPs both are measured by.
    head = fed["target_index"].shape[1]
    our_flops = flops.train_step_flops(cfg, size.batch, size.seq_len, size.images, head_positions=head)["total"]
    tokens = size.batch * size.seq_len
    out = {"first_loss": first, "peak": peak, "model_flops": model_flops, "tokens": tokens,
           "times": times, "unroll_layers": cfg.unroll_layers, "jax": jax.__version__,
           "head_positions": (head, size.seq_len), "flops": {"ours": our_flops, "torch": model_flops},
           "load": (load_before, os.getloadavg()[0])}
    for name in ("ours", "torch"):
        t = times[name]
        out[f"{name}_tokens_per_s"] = tokens / t["best"]
        out[f"{name}_peak_share"] = model_flops / t["best"] / peak["wall"]
        out[f"{name}_cpu_peak_share"] = model_flops / t["cpu_best"] / peak["cpu"]
        out[f"{name}_done_peak_share"] = out["flops"][name] / t["best"] / peak["wall"]
    out["cpu_ratio"] = times["torch"]["cpu_best"] / times["ours"]["cpu_best"]
    out["ratio"] = out["ours_tokens_per_s"] / out["torch_tokens_per_s"]
    return out


def run_kd(size: Size = Size(), mode: str = "topk", k: int = 20, rounds: int = 5, steps: int = 3,
           full_head: bool = False, **model_overrides) -> dict:
    """Our step with and without the KD term, same model, batch and head positions."""
    from comd_jax.bench import timing
    from comd_jax.train.kd import KDConfig

    load_before = os.getloadavg()[0]
    cfg = model_config(size, **model_overrides)
    batch = with_teacher_scores(make_batch(size, cfg), size.vocab, k)
    plain, *_ = build_ours(cfg, batch, full_head=full_head)
    kd, *_ = build_ours(cfg, batch, full_head=full_head, kd=KDConfig(mode=mode, top_k=k))
    first = {"plain": plain(), "kd": kd()}
    times = timing.interleaved_rounds({"plain": plain, "kd": kd}, rounds, steps)
    return {"first_loss": first, "times": times, "mode": mode, "k": k, "load": (load_before, os.getloadavg()[0]),
            "ratio": times["kd"]["best"] / times["plain"]["best"],
            "cpu_ratio": times["kd"]["cpu_best"] / times["plain"]["cpu_best"]}


def report_kd(r: dict) -> None:
    print(f"load average {r['load'][0]:.2f} before, {r['load'][1]:.2f} after; kd={r['mode']}, k={r['k']}, "
          f"every target position scored")
    print(f"first loss      plain {r['first_loss']['plain']:.5f}   with kd {r['first_loss']['kd']:.5f} "
          "(the cross-entropy: equal)")
    for name in ("plain", "kd"):
        t = r["times"][name]
        print(f"{name:6s} step    best {t['best'] * 1e3:7.1f} ms  median {t['median'] * 1e3:7.1f} ms  "
              f"cpu {t['cpu_best'] * 1e3:7.1f} ms")
    print(f"ratio on CPU time (kd/plain): {r['cpu_ratio']:.3f}")
    print(f"ratio (kd step / plain step time): {r['ratio']:.3f}")


def report(r: dict) -> None:
    print(f"layers          {'unrolled' if r['unroll_layers'] else 'scanned'}; jax {r['jax']}; "
          f"load average {r['load'][0]:.1f} before, {r['load'][1]:.1f} after")
    print(f"first loss      ours {r['first_loss']['ours']:.5f}   torch {r['first_loss']['torch']:.5f}")
    print(f"matmul peak     {r['peak']['wall'] / 1e9:.1f} GFLOP/s wall, {r['peak']['cpu'] / 1e9:.1f} GFLOP per "
          f"CPU-second (float32 XLA matmul, best seen over the run)")
    print(f"model FLOPs     {r['model_flops'] / 1e9:.2f} GFLOP/step, {r['tokens']} tokens/step")
    k, t = r["head_positions"]
    print(f"kept positions  ours at {k} of {t} per row for the last block's queries and MLP and the LM head "
          f"({'every position' if k == t else 'those predicting a target'}), torch at all {t}: "
          f"ours does {r['flops']['ours'] / 1e9:.2f} GFLOP/step")
    for name in ("ours", "torch"):
        t = r["times"][name]
        print(f"{name:6s} step    best {t['best'] * 1e3:7.1f} ms  median {t['median'] * 1e3:7.1f} ms  "
              f"cpu {t['cpu_best'] * 1e3:7.1f} ms   {r[f'{name}_tokens_per_s']:7.0f} tokens/s   "
              f"{100 * r[f'{name}_peak_share']:5.1f}% of matmul peak in model FLOPs (cpu-time basis "
              f"{100 * r[f'{name}_cpu_peak_share']:5.1f}%)")
    print(f"ours on the FLOPs it does: {100 * r['ours_done_peak_share']:5.1f}% of matmul peak")
    print(f"ratio on CPU time (torch/ours): {r['cpu_ratio']:.3f}")
    print(f"ratio (ours/torch tokens/s): {r['ratio']:.3f}")


def main(argv=None) -> None:
    from comd_jax import cpu_env

    cpu_env.reexec_if_needed()  # huge-page malloc for both sides; see comd_jax/cpu_env.py
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    parser.add_argument("--scan", action="store_true", help="scan the layers instead of unrolling them")
    parser.add_argument("--full_head", action="store_true",
                        help="run our LM head at every position (transformers' work) instead of only where a target is")
    for field in dataclasses.fields(Size):
        parser.add_argument(f"--{field.name}", type=int, default=field.default)
    parser.add_argument("--kd", choices=("topk", "on_policy"), default=None,
                        help="time our step with and without the teacher's top-k KL instead of against torch")
    parser.add_argument("--kd_k", type=int, default=20, help="the teacher's k with --kd")
    args = parser.parse_args(argv)
    size = Size(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Size)})
    print(f"size: {size}")
    if args.kd:
        report_kd(run_kd(size, args.kd, args.kd_k, args.rounds, args.steps, full_head=args.full_head,
                         unroll_layers=not args.scan))
        return
    report(run(size, args.rounds, args.steps, full_head=args.full_head, unroll_layers=not args.scan))


if __name__ == "__main__":
    main()
