"""Peak host memory of loading a ~1 GB checkpoint: our load_pretrained vs transformers.

    python -m comd_jax.bench.load_memory [--dir=/tmp/llama_1g] [--keep]

Writes a random Llama-style checkpoint (float32 safetensors in 3 shards plus an
index, one shard held in memory at a time), then loads it in two fresh
subprocesses — (a) `comd_jax.load_pretrained`, (b) transformers'
`LlamaForCausalLM.from_pretrained` — and reports each one's peak resident
memory above its baseline (the process after imports, before loading). On CPU
the loaded parameters themselves live in host memory, so the floor is the model
size; the goal is model + about one tensor, far below 2x the model. Both
sides read every parameter once after loading (transformers may leave weights
memory-mapped and untouched until first use). Ratio (ours/transformers peak
above baseline) last.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

# ~270M parameters: 1.08 GB in float32.
LLAMA_1G = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                num_attention_heads=16, num_key_value_heads=16)


def tensor_shapes(cfg: dict) -> list:
    """(name, shape) of a Llama checkpoint in transformers' layout, in file order."""
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = d // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    out = [("model.embed_tokens.weight", (v, d))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (d, d)), (p + "self_attn.k_proj.weight", (kv, d)),
                (p + "self_attn.v_proj.weight", (kv, d)), (p + "self_attn.o_proj.weight", (d, d)),
                (p + "mlp.gate_proj.weight", (f, d)), (p + "mlp.up_proj.weight", (f, d)),
                (p + "mlp.down_proj.weight", (d, f)),
                (p + "input_layernorm.weight", (d,)), (p + "post_attention_layernorm.weight", (d,))]
    return out + [("model.norm.weight", (d,)), ("lm_head.weight", (v, d))]


def write_checkpoint(directory: str, cfg: dict = LLAMA_1G, files: int = 3, seed: int = 0) -> int:
    """Random float32 weights in `files` safetensors shards + index; returns total bytes.
    Each shard is generated, written and dropped before the next one."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    shapes = tensor_shapes(cfg)
    total = sum(int(np.prod(s)) * 4 for _, s in shapes)
    rng = np.random.default_rng(seed)
    budget, weight_map, shard, shard_bytes, n = total / files, {}, {}, 0, 0

    def flush():
        nonlocal shard, shard_bytes, n
        n += 1
        name = f"model-{n:05d}-of-{files:05d}.safetensors"
        save_file(shard, os.path.join(directory, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        shard, shard_bytes = {}, 0

    for key, shape in shapes:
        if key.endswith("norm.weight"):
            shard[key] = np.ones(shape, np.float32)
        else:
            shard[key] = (0.02 * rng.standard_normal(shape, dtype=np.float32))
        shard_bytes += shard[key].nbytes
        if shard_bytes >= budget and n < files - 1:
            flush()
    flush()
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    config = dict(cfg, model_type="llama", architectures=["LlamaForCausalLM"], rms_norm_eps=1e-5,
                  max_position_embeddings=2048, rope_theta=10000.0, tie_word_embeddings=False,
                  hidden_act="silu", torch_dtype="float32")
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return total


def _load_ours(directory: str):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from comd_jax import load_pretrained
    from comd_jax.bench.rss import PeakAbove

    # Start the backend and compile once before the baseline: XLA's one-time
    # code-generation footprint is the runtime's, not the loader's.
    jax.jit(lambda x: x + 1)(jnp.zeros(4)).block_until_ready()
    with PeakAbove() as p:
        model = load_pretrained(directory)
        jax.block_until_ready(nnx.state(model))
        touch = sum(float(jnp.sum(x)) for x in jax.tree.leaves(nnx.state(model)))
    del touch, model
    return p


def _load_transformers(directory: str):
    import torch
    import transformers

    from comd_jax.bench.rss import PeakAbove

    torch.zeros(4).sum()
    with PeakAbove() as p:
        model = transformers.LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32)
        # transformers may leave weights memory-mapped and untouched; read every one
        # once, as the first forward pass would, so both sides hold the whole model.
        with torch.no_grad():
            touch = sum(float(t.sum()) for t in model.state_dict().values())
    del touch, model
    return p


LOADERS = {"ours": _load_ours, "transformers": _load_transformers}


def child(which: str, directory: str) -> None:
    """Runs in a fresh process: load once, print the readings as JSON."""
    p = LOADERS[which](directory)
    print("RESULT=" + json.dumps({"baseline": p.baseline, "peak": p.peak, "after": p.after,
                                  "after_file": p.after_file}))


def measure(which: str, directory: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "comd_jax.bench.load_memory", "--child", which,
                           "--dir", directory], capture_output=True, text=True, env={**os.environ,
                                                                                      "JAX_PLATFORMS": "cpu"})
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT=")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{which} loader failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT="):])


def run(directory: str, cfg: dict = LLAMA_1G, files: int = 3) -> dict:
    model_bytes = write_checkpoint(directory, cfg, files)
    largest = max(int(np.prod(s)) * 4 for _, s in tensor_shapes(cfg))
    out = {"model_bytes": model_bytes, "largest_tensor": largest}
    for which in LOADERS:
        r = measure(which, directory)
        out[which] = dict(r, above=r["peak"] - r["baseline"], kept=r["after"] - r["baseline"])
    out["ratio"] = out["ours"]["above"] / out["transformers"]["above"]
    return out


def report(r: dict) -> None:
    mb = lambda x: f"{x / 2 ** 20:8.1f} MiB"  # noqa: E731
    m = r["model_bytes"]
    print(f"model bytes          {mb(m)}   (largest tensor {mb(r['largest_tensor'])})")
    for which in LOADERS:
        x = r[which]
        print(f"{which:13s} peak above baseline {mb(x['above'])} = {x['above'] / m:4.2f}x model   "
              f"(baseline {mb(x['baseline'])}, kept after load {mb(x['kept'])})")
    print(f"ratio (ours/transformers peak above baseline): {r['ratio']:.3f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="where to write the checkpoint (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint afterwards")
    parser.add_argument("--child", choices=sorted(LOADERS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.dir)
        return
    directory = args.dir or tempfile.mkdtemp(prefix="llama_1g_")
    try:
        report(run(directory))
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
