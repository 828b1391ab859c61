"""The PyTorch side of `gpu_check`, in its own process.

A separate process, because two frameworks' GPU allocators in one process each
keep what they once held: run in turn, the second would find the card full.
Here transformers' LLaVA loads the weights `gpu_check` saved, trains on the
same batch in bfloat16 autocast over float32 weights (our mixed precision),
and prints one JSON line.

    python -m comd_jax.bench.torch_peer --model=DIR --batch=batch.npz [--rounds=3 --steps=5]
"""
from __future__ import annotations

import argparse
import contextlib
import json

import numpy as np


def make_step(model, device: str, bf16: bool):
    """One AdamW step (the same optimizer as the CPU bench), forward under bf16 autocast."""
    import torch

    from comd_jax.bench import torch_llava

    inner = torch_llava.make_step(model, lr=1e-4, fused=True)
    autocast = (lambda: torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)) if bf16 \
        else contextlib.nullcontext

    def step(inputs: dict) -> float:
        with autocast():
            loss = inner(inputs)  # float(loss) waits for the GPU: the step is complete when it returns
        return loss

    return step


def run(model_dir: str, batch: dict, rounds: int, steps: int, device: str, bf16: bool,
        checkpointing: bool = False) -> dict:
    import torch

    from comd_jax.bench import timing, torch_llava

    model = torch_llava.load_model(model_dir).to(device)
    if checkpointing:
        model.gradient_checkpointing_enable()
    inputs = {k: v.to(device) for k, v in torch_llava.to_torch_batch(batch).items()}
    step = make_step(model, device, bf16)
    first = step(inputs)
    times = timing.interleaved_rounds({"torch": lambda: step(inputs)}, rounds, steps)["torch"]
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
    return {"first_loss": first, "best": times["best"], "median": times["median"], "peak_bytes": peak,
            "torch": torch.__version__}


def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast (the CPU smoke test)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (when short of memory)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = dict(np.load(args.batch))
    result = run(args.model, batch, args.rounds, args.steps, device, not args.fp32, args.checkpointing)
    print("RESULT=" + json.dumps(result))


if __name__ == "__main__":
    main()
