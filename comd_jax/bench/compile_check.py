"""Will the train step fit? Compile it from shapes alone on a simulated mesh and read its memory.

    python -m comd_jax.bench.compile_check --config=configs/comd.py:paper --topology=8xa100-40g
    python -m comd_jax.bench.compile_check --config=configs/comd.py:paper --topology=v5p-8 --recipe=fsdp_tp
    python -m comd_jax.bench.compile_check --config=configs/comd.py:paper --all

The step is lowered and compiled with abstract inputs (`jax.ShapeDtypeStruct`)
for a CPU mesh of the topology's device count, so no parameter is ever
allocated. XLA's memory analysis of the partitioned program gives per-device
arguments (parameters + optimizer state + the batch shard), temporaries and
outputs. The numbers come from XLA's CPU compiler: accelerator compilers
schedule and fuse differently, so treat them as an estimate (a 10% margin is
kept when judging "fits").
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from comd_jax.bench import topologies as topo

FIT_MARGIN = 0.9  # usable share of HBM: runtime reservations, compiler differences


def use_cpu_devices(n: int) -> None:
    """Simulate n devices; must run before jax initializes its backend."""
    if "jax" in sys.modules:
        import jax

        if len(jax.devices()) >= n:
            return
        raise RuntimeError(f"jax already started with {len(jax.devices())} device(s); run the compile "
                           f"check in a fresh process (it needs {n})")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
    os.environ["JAX_PLATFORMS"] = "cpu"


def load_config(spec: str):
    """'path/to/file.py:preset' → the file's get_config(preset) (preset optional)."""
    from comd_jax.config import load_config_file

    return load_config_file(spec)


def abstract_batch(setup, global_batch: int, seq_len: int, images: int = 1) -> dict:
    import jax
    import jax.numpy as jnp

    from comd_jax.train.step import batch_keys

    shapes = {"input_ids": ((global_batch, seq_len), jnp.int32),
              "attention_mask": ((global_batch, seq_len), jnp.int32),
              "loss_mask": ((global_batch, seq_len), jnp.float32),
              # every position: the LM head's worst case, so the memory printed is an upper bound
              "target_index": ((global_batch, seq_len), jnp.int32)}
    vision = setup.model_cfg.vision
    if vision is not None:
        shapes["pixel_values"] = ((global_batch, images, vision.image_size, vision.image_size,
                                   vision.num_channels), jnp.float32)
    return {k: jax.ShapeDtypeStruct(*shapes[k]) for k in batch_keys(setup)}


def longest_sequence(section) -> int:
    """The padded length the step sees at most: `seq_len`, else the largest length bucket."""
    if section.get("seq_len"):
        return int(section.seq_len)
    return int(max(section.length_buckets))


def sharded_bytes(tree, shardings) -> int:
    """Bytes one device holds of `tree` (abstract leaves) under `shardings`."""
    import jax
    import numpy as np

    def one(leaf, sharding):
        shard = sharding.shard_shape(leaf.shape)
        return int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize

    return sum(jax.tree.leaves(jax.tree.map(one, tree, shardings)))


def check(config, topology: topo.Topology, recipe: str, mesh_shape=None, stage: str = "tune",
          global_batch=None) -> dict:
    """Compile the step for one topology/recipe; per-device memory in bytes and timings."""
    import jax

    from comd_jax import config as config_lib
    from comd_jax import sharding as shd
    from comd_jax.train.state import create_setup
    from comd_jax.train.step import build_train_step

    section = config[stage]
    model_cfg = config_lib.model_config(config.model)
    optim_cfg = config_lib.optim_config(section)
    mesh_shape = tuple(mesh_shape or topology.default_mesh(recipe))
    mesh = shd.make_mesh(mesh_shape, jax.devices()[:topology.devices])
    setup = create_setup(model_cfg, optim_cfg, mesh, recipe)
    accum = int(section.get("grad_accum_steps", 1))
    step = build_train_step(setup, accum)
    seq_len = longest_sequence(section)
    global_batch = int(global_batch or section.global_batch)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % (accum * shards):
        raise ValueError(f"global batch {global_batch} does not split into {accum} microbatches over "
                         f"{shards} batch shards; pass --global_batch")
    batch = abstract_batch(setup, global_batch, seq_len, int(section.get("max_images", 1)))
    rng = jax.eval_shape(lambda: jax.random.key(0))
    start = time.perf_counter()
    lowered = step.lower(setup.abstract_state, batch, rng)
    lowered_at = time.perf_counter()
    mem = lowered.compile().memory_analysis()
    done = time.perf_counter()
    state_bytes = sharded_bytes(setup.abstract_state, setup.state_shardings)
    peak = (mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes
            - mem.alias_size_in_bytes)
    return {"topology": topology.name, "recipe": recipe, "mesh": dict(zip(shd.MESH_AXES, mesh.devices.shape)),
            "params": sum(x.size for x in jax.tree.leaves(setup.abstract_state.params)),
            "global_batch": global_batch, "accum": accum, "seq_len": seq_len,
            "state": state_bytes, "arguments": mem.argument_size_in_bytes, "temporaries": mem.temp_size_in_bytes,
            "outputs": mem.output_size_in_bytes, "aliased": mem.alias_size_in_bytes, "peak": peak,
            "hbm": topology.hbm_gib * topo.GIB, "fits": peak <= FIT_MARGIN * topology.hbm_gib * topo.GIB,
            "lower_s": lowered_at - start, "compile_s": done - lowered_at}


def _gib(x: float) -> str:
    """Bytes, readable: GiB from 1 GiB up, MiB below."""
    return f"{x / topo.GIB:6.2f} GiB" if x >= topo.GIB else f"{x / 2 ** 20:6.1f} MiB"


def report(r: dict, config) -> None:
    m = config.model
    mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
    print(f"topology {r['topology']} ({topo.get(r['topology']).about}); recipe {r['recipe']}; mesh {mesh}")
    print(f"model    {r['params'] / 1e9:.2f}B parameters; params {m.param_dtype}, compute {m.dtype}, "
          f"remat {m.remat}")
    print(f"step     global batch {r['global_batch']} = {r['accum']} microbatches x "
          f"{r['global_batch'] // r['accum']}, length {r['seq_len']}")
    print(f"per device: arguments {_gib(r['arguments'])} (of which params + optimizer state "
          f"{_gib(r['state'])}), temporaries {_gib(r['temporaries'])}, outputs {_gib(r['outputs'])} "
          f"(aliased with donated arguments {_gib(r['aliased'])})")
    print(f"lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s (XLA:CPU, simulated devices)")
    verdict = "fits" if r["fits"] else "does NOT fit"
    print(f"peak per device {_gib(r['peak'])} of {r['hbm'] / topo.GIB:.0f} GiB HBM "
          f"({100 * r['peak'] / r['hbm']:.0f}%): {verdict} (with a {100 - 100 * FIT_MARGIN:.0f}% margin)")


def table(rows: list) -> None:
    print(f"{'topology':12s} {'recipe':8s} {'mesh (d,f,t)':13s} {'state':>10s} {'temps':>10s} {'peak':>10s} "
          f"{'HBM':>6s}  fits  compile")
    for r in rows:
        if "error" in r:
            print(f"{r['topology']:12s} {r['recipe']:8s} error: {r['error']}")
            continue
        mesh = ",".join(str(v) for v in r["mesh"].values())
        print(f"{r['topology']:12s} {r['recipe']:8s} {mesh:13s} {_gib(r['state']):>10s} {_gib(r['temporaries']):>10s} "
              f"{_gib(r['peak']):>10s} {r['hbm'] / topo.GIB:4.0f}G  {'yes' if r['fits'] else 'NO ':4s}  "
              f"{r['compile_s']:5.0f} s")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="path.py[:preset], e.g. configs/comd.py:paper")
    parser.add_argument("--topology", choices=sorted(topo.TOPOLOGIES), help="what to simulate")
    parser.add_argument("--recipe", choices=topo.RECIPES, help="sharding recipe (default: the topology's)")
    parser.add_argument("--mesh", help="data,fsdp,tensor sizes, e.g. 1,4,2 (default: from the recipe)")
    parser.add_argument("--stage", default="tune", help="config section with the batch settings")
    parser.add_argument("--global_batch", type=int, help="override the stage's global batch")
    parser.add_argument("--all", action="store_true", help="table over every topology x recipe")
    args = parser.parse_args(argv)
    if not args.all and not args.topology:
        parser.error("give --topology=NAME or --all")
    return args


def main(argv=None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    chosen = list(topo.TOPOLOGIES.values()) if args.all else [topo.get(args.topology)]
    use_cpu_devices(max(t.devices for t in chosen))
    config = load_config(args.config)
    mesh = tuple(int(x) for x in args.mesh.split(",")) if args.mesh else None
    if not args.all:
        report(check(config, chosen[0], args.recipe or chosen[0].recipe, mesh, args.stage,
                      args.global_batch), config)
        return
    rows = []
    for t in chosen:
        for recipe in ([args.recipe] if args.recipe else topo.RECIPES):
            try:
                rows.append(check(config, t, recipe, mesh, args.stage, args.global_batch))
            except Exception as e:  # one failing layout should not hide the rest of the table
                rows.append({"topology": t.name, "recipe": recipe, "error": f"{type(e).__name__}: {e}"[:200]})
            print(f"  compiled {t.name}/{recipe}", file=sys.stderr, flush=True)
    table(rows)


if __name__ == "__main__":
    main()
