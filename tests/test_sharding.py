"""The train step on 8 simulated devices equals the single-device step; FSDP really
splits large parameters and per-device memory falls ~1/N."""
import numpy as np
import pytest

from tests._multidevice import run_with_devices

COMMON = """
import jax, jax.numpy as jnp, numpy as np
from flax.traverse_util import flatten_dict
from comd_jax import sharding as shd
from comd_jax.models import DecoderConfig, VisionConfig, VLMConfig
from comd_jax.train.optim import OptimConfig
from comd_jax.train.state import create_setup, init_state
from comd_jax.train.step import build_train_step, host_batch

def tiny(vocab=128, hidden=64, layers=2):
    return VLMConfig(
        text=DecoderConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_layers=layers,
                           num_heads=8, num_kv_heads=4),
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, image_size=16,
                            patch_size=4),
        image_token_id=127)

def batch(cfg, b=8, t=40, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 120, (b, t)).astype(np.int32)
    ids[:, 1:17] = cfg.image_token_id
    mask = np.ones((b, t), np.int32)
    mask[::3, -5:] = 0  # some right padding
    loss = ((np.arange(t) >= 18)[None] & (mask == 1)).astype(np.float32)
    px = rng.normal(size=(b, 1, 16, 16, 3)).astype(np.float32)
    return dict(input_ids=ids, attention_mask=mask, loss_mask=loss, pixel_values=px)
"""


@pytest.fixture(scope="module")
def mesh_results():
    code = COMMON + """
cfg = tiny()
# A large Adam epsilon keeps updates linear in the gradient: with the default
# 1e-8, a gradient that is ~0 up to rounding turns into a full +-lr step whose
# sign depends on reduction order, which would test Adam, not sharding.
optim = OptimConfig(learning_rate=1e-2, warmup_ratio=0.0, total_steps=10, eps=1e-3)
data = batch(cfg)
# 22 targets in 40 positions: the LM head runs on the gathered 25, on every mesh.
assert host_batch(data, create_setup(cfg, optim, shd.make_mesh((1, 1, 1), jax.devices()[:1]), "fsdp"), 8)[
    "target_index"].shape == (8, 25)
result = {}
# fsdp8 also accumulates over 2 microbatches: equal to one full-batch step.
layouts = {"single": ((1, 1, 1), "fsdp", 1), "dp8": ((8, 1, 1), "dp", 1), "fsdp8": ((1, 8, 1), "fsdp", 2),
           "fsdp_tp222": ((2, 2, 2), "fsdp_tp", 1)}
for name, (shape, recipe, accum) in layouts.items():
    devices = jax.devices()[:1] if shape == (1, 1, 1) else jax.devices()
    mesh = shd.make_mesh(shape, devices)
    setup = create_setup(cfg, optim, mesh, recipe)
    state = init_state(setup, seed=3)
    step = build_train_step(setup, accum)
    losses = []
    for i in range(2):
        state, metrics = step(state, host_batch(data, setup, capacity_steps=8), jax.random.key(i))
        losses.append(float(metrics["loss"]))
    flat = flatten_dict(jax.tree.map(lambda x: np.asarray(x).tolist(), state.params))
    result[name] = {"losses": losses, "params": {"/".join(map(str, k)): v for k, v in flat.items()},
                    "specs": {"/".join(map(str, k)): str(v.sharding.spec)
                              for k, v in flatten_dict(state.params).items()}}
"""
    return run_with_devices(code)


@pytest.mark.e2e
@pytest.mark.parametrize("layout", ["dp8", "fsdp8", "fsdp_tp222"])
def test_sharded_step_matches_single_device(mesh_results, layout):
    ref, got = mesh_results["single"], mesh_results[layout]
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-5, atol=1e-6)
    assert ref["losses"][1] < ref["losses"][0]  # the step really trains
    for name, value in ref["params"].items():
        np.testing.assert_allclose(np.asarray(got["params"][name]), np.asarray(value), rtol=1e-5, atol=1e-5,
                                   err_msg=f"{layout}: {name}")


@pytest.mark.e2e
def test_layouts_actually_shard(mesh_results):
    specs = mesh_results["fsdp8"]["specs"]
    assert "fsdp" in specs["text/layers/gate/kernel"]
    tp = mesh_results["fsdp_tp222"]["specs"]
    assert "tensor" in tp["text/layers/gate/kernel"] and "fsdp" in tp["text/layers/gate/kernel"]
    for spec in mesh_results["dp8"]["specs"].values():  # data parallel: every parameter replicated
        assert not any(axis in spec for axis in ("data", "fsdp", "tensor")), spec


@pytest.mark.e2e
def test_fsdp_splits_every_large_parameter_and_memory_falls():
    code = COMMON + """
cfg = tiny(vocab=4096, hidden=512, layers=2)
optim = OptimConfig(learning_rate=1e-3, total_steps=10)
result = {"large": {}, "bytes": {}}
mesh = shd.make_mesh((1, 8, 1))
setup = create_setup(cfg, optim, mesh, "fsdp")
state = init_state(setup, seed=0)
for path, leaf in flatten_dict(state.params).items():
    if leaf.size > 1_000_000:
        result["large"]["/".join(map(str, path))] = [list(leaf.shape), list(leaf.addressable_shards[0].data.shape)]
abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host_batch(batch(cfg, b=8), setup))
for n in (1, 2, 8):
    mesh = shd.make_mesh((1, n, 1), jax.devices()[:n])
    setup = create_setup(cfg, optim, mesh, "fsdp")
    compiled = build_train_step(setup).lower(setup.abstract_state, abstract, jax.random.key(0)).compile()
    result["bytes"][n] = compiled.memory_analysis().argument_size_in_bytes
"""
    result = run_with_devices(code)
    assert len(result["large"]) >= 3, result["large"]  # embed, lm_head, stacked layer kernels
    for name, (full, shard) in result["large"].items():
        assert np.prod(shard) * 8 == np.prod(full), f"{name}: shard {shard} of {full} is not split 8 ways"
    b = {int(k): v for k, v in result["bytes"].items()}
    for n in (2, 8):
        # params + optimizer state dominate the arguments; the batch is small and split too
        assert b[n] <= b[1] / n * 1.15, f"per-device argument bytes {b[n]} on fsdp={n} vs {b[1]} on 1"
