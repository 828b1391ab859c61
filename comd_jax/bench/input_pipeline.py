"""Is the input pipeline ever the bottleneck? Pipeline examples/s vs the train step's.

    python -m comd_jax.bench.input_pipeline [--preset=default] [--batches=10]

Builds a small offline world (TFDS) and its tokenizer in a temporary folder,
runs the real pipeline (vicuna_v1, TFDS source, images decoded and
normalized, length buckets) with the preset's global batch, then times the
real jitted train step (`comd_jax.train.step`) on those same batches, every
bucket compiled beforehand. The two are timed one after the other, each with
the whole machine, and the ratio pipeline/step is printed last (goal: >= 3).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def _experiment_config(preset: str):
    from comd_jax import config as config_lib

    return config_lib.preset(preset)


def _pipeline(workdir: str, model_cfg, batch_size: int, buckets: tuple[int, ...]):
    from transformers import AutoTokenizer

    from comd_jax.data import images, pipeline
    from comd_jax.data.synthetic import builder, tokenizer, world

    spec = world.WorldSpec(
        image_size=model_cfg.vision.image_size,
        num_captions=200,
        num_instructions=1200,
        num_heldout=10,
    )
    tok = AutoTokenizer.from_pretrained(
        tokenizer.build_world_tokenizer(
            spec, os.path.join(workdir, "tokenizer"), vocab_size=model_cfg.text.vocab_size
        )
    )
    assert tok.convert_tokens_to_ids("<image>") == model_cfg.image_token_id
    source = builder.source(spec, world.INSTRUCTIONS, os.path.join(workdir, "tfds"))
    config = pipeline.PipelineConfig(batch_size=batch_size, length_buckets=buckets, strict=True)
    return pipeline.make_pipeline(
        source,
        template="vicuna_v1",
        tokenizer=tok,
        image_config=images.ImageProcessorConfig(size=spec.image_size),
        num_image_tokens=model_cfg.num_image_tokens,
        config=config,
    )


def _time_pipeline(pipe, batches: int):
    next(pipe)  # threads started, first decode done
    start = time.perf_counter()
    seen = [next(pipe) for _ in range(batches)]
    return time.perf_counter() - start, seen


def _time_step(cfg, batches):
    import jax

    from comd_jax import config as config_lib
    from comd_jax import sharding as shd
    from comd_jax.train.state import create_setup, init_state
    from comd_jax.train.step import batch_shardings, build_train_step, host_batch

    model_cfg = config_lib.model_config(cfg.model)
    mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
    setup = create_setup(model_cfg, config_lib.optim_config(cfg.tune), mesh, "fsdp")
    state = init_state(setup, 0)
    step, rng = build_train_step(setup, 1), jax.random.key(0)
    shardings = batch_shardings(setup)
    device_batches = [
        jax.device_put(host_batch(b, setup), shardings) for b in batches
    ]
    compiled = {}
    for b in device_batches:  # one compile per length bucket, outside the timing
        length = b["input_ids"].shape[1]
        if length not in compiled:
            compiled[length] = step.lower(state, b, rng).compile()
            state, _ = compiled[length](state, b, rng)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for b in device_batches:
        state, metrics = compiled[b["input_ids"].shape[1]](state, b, rng)
    jax.block_until_ready(state)
    return time.perf_counter() - start, sorted(compiled)


def run(preset: str = "default", batches: int = 10) -> dict:
    from comd_jax import config as config_lib

    cfg = _experiment_config(preset)
    model_cfg = config_lib.model_config(cfg.model)
    batch_size = cfg.tune.global_batch
    buckets = (128, 192, 256)
    with tempfile.TemporaryDirectory() as workdir:
        with _pipeline(workdir, model_cfg, batch_size, buckets) as pipe:
            pipeline_s, seen = _time_pipeline(pipe, batches)
    step_s, lengths = _time_step(cfg, seen)
    examples = batches * batch_size
    out = {
        "preset": preset,
        "batch_size": batch_size,
        "batches": batches,
        "bucket_lengths_seen": lengths,
        "pipeline_examples_per_s": examples / pipeline_s,
        "step_examples_per_s": examples / step_s,
    }
    out["ratio"] = out["pipeline_examples_per_s"] / out["step_examples_per_s"]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args(argv)
    r = run(args.preset, args.batches)
    print(
        f"preset {r['preset']}: global batch {r['batch_size']}, {r['batches']} batches, "
        f"lengths {r['bucket_lengths_seen']}"
    )
    print(f"input pipeline  {r['pipeline_examples_per_s']:10.1f} examples/s")
    print(f"train step      {r['step_examples_per_s']:10.1f} examples/s")
    print(f"ratio pipeline/step: {r['ratio']:.2f}x (goal >= 3)")


if __name__ == "__main__":
    main()
