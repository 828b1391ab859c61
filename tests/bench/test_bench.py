"""Each benchmark's core runs at a trivial size, so CI catches breakage.

No timing is asserted anywhere: the numbers belong in BENCHMARKS.md.
"""
import numpy as np
import pytest

from tests._multidevice import run_with_devices

pytest.importorskip("torch")


def test_train_step_bench_runs_and_both_sides_agree():
    from comd_jax.bench import train_step

    size = train_step.Size(hidden=32, intermediate=64, layers=1, heads=2, kv_heads=1, vocab=64,
                           vision_hidden=32, vision_layers=2, image_size=28, patch=14, images=1,
                           batch=2, seq_len=16)
    r = train_step.run(size, rounds=1, steps=1, peak_n=64)
    # Same weights, same batch: the first losses of the two steps must agree.
    np.testing.assert_allclose(r["first_loss"]["ours"], r["first_loss"]["torch"], rtol=1e-4)
    assert r["tokens"] == 32 and r["model_flops"] > 0 and r["ratio"] > 0
    assert r["head_positions"] == (8, 16)  # ours kept the positions where targets are; torch all of them
    assert r["flops"]["ours"] < r["flops"]["torch"] == r["model_flops"]
    # Utilization counts the model's FLOPs for both; ours is also shown on the FLOPs it does.
    for name in ("ours", "torch"):
        want = r["model_flops"] / r["times"][name]["best"] / r["peak"]["wall"]
        assert r[f"{name}_peak_share"] == pytest.approx(want)
    assert r["ours_done_peak_share"] == pytest.approx(r["ours_peak_share"] * r["flops"]["ours"] / r["model_flops"])


def test_train_step_bench_times_the_kd_term(capsys):
    from comd_jax.bench import train_step

    size = train_step.Size(hidden=32, intermediate=64, layers=1, heads=2, kv_heads=1, vocab=64,
                           vision_hidden=32, vision_layers=2, image_size=28, patch=14, images=1,
                           batch=2, seq_len=16)
    r = train_step.run_kd(size, "topk", k=4, rounds=1, steps=1)
    # The cross-entropy is the same number; the KD term is reported beside it, not in it.
    assert r["first_loss"]["plain"] == pytest.approx(r["first_loss"]["kd"], rel=1e-6)
    assert r["ratio"] > 0 and set(r["times"]) == {"plain", "kd"}
    train_step.report_kd(r)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("ratio (kd step / plain step time)")


def test_flops_count_the_frozen_tower_forward_only():
    from comd_jax.bench import train_step
    from comd_jax.train import flops

    cfg = train_step.model_config(train_step.Size(hidden=64, intermediate=128, layers=2, vocab=128,
                                                  vision_hidden=32, image_size=28))
    f = flops.train_step_flops(cfg, batch=2, seq_len=16, images_per_sample=1)
    assert f["total"] == f["text"] + f["projector"] + f["vision"]
    # The text part alone is at least 6 x tokens x matmul weights.
    assert f["text"] >= 6 * 32 * flops.decoder_matmul_params(cfg)
    assert flops.train_step_flops(cfg, 2, 16, 1, head_positions=16) == f
    # 10 of 16 positions per row kept: 2 rows x 6 positions drop the LM head and the last
    # block's q, o and MLP (6 x weights each), and that block's queries there.
    fewer = flops.train_step_flops(cfg, 2, 16, 1, head_positions=10)
    per_position = 64 * 128 + 2 * 64 * 64 + 3 * 64 * 128
    last_attention = 3 * 2 * 2 * (2 * 16 * 16 * 64)  # QK^T and PV, forward and backward, one layer
    assert f["total"] - fewer["total"] == 6 * 2 * 6 * per_position + last_attention * 6 // 16


def test_compile_check_smoke_on_two_devices():
    result = run_with_devices("""
        from comd_jax.bench import compile_check, topologies
        config = compile_check.load_config("configs/comd.py:smoke")
        two = topologies.Topology("test-2", 2, 16, "fsdp", "two simulated devices")
        r = compile_check.check(config, two, "fsdp", global_batch=2)
        result = {k: r[k] for k in ("state", "arguments", "temporaries", "peak", "fits", "mesh")}
    """, devices=2)
    assert result["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1}
    assert 0 < result["state"] <= result["arguments"] and result["temporaries"] > 0
    assert result["fits"]


def test_load_memory_tiny_checkpoint(tmp_path):
    from comd_jax.bench import load_memory

    tiny = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    r = load_memory.run(str(tmp_path), tiny, files=2)
    assert r["model_bytes"] == sum(int(np.prod(s)) * 4 for _, s in load_memory.tensor_shapes(tiny))
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    for which in ("ours", "transformers"):
        assert r[which]["peak"] >= r[which]["baseline"] > 0


def test_gemm_bench_times_the_steps_shapes_on_both_sides():
    from comd_jax.bench import gemm, train_step

    size = train_step.Size(hidden=32, intermediate=64, layers=2, heads=4, kv_heads=2, vocab=48, batch=2, seq_len=8)
    shapes = {name: (m, k, n, count) for name, m, k, n, count in gemm.step_gemms(size)}
    # The k/v projections are narrower under grouped-query attention; each layer runs each shape.
    assert shapes["k/v"] == (16, 32, 16, 4) and shapes["gate/up"] == (16, 32, 64, 4)
    assert shapes["lm_head"] == (16, 32, 48, 1)
    r = gemm.run(size, rounds=1, steps=1)  # also checks both sides compute the same products
    assert len(r["rows"]) == 3 * len(shapes)
    assert r["ratio"] == r["total_s"]["torch"] / r["total_s"]["ours"] > 0


def test_generate_bench_runs_our_engine_and_the_peer_on_the_same_prompts(capsys):
    from comd_jax.bench import generate

    generate.main(["--preset=smoke", "--batches=2", "--new=4", "--rounds=1", "--peers=eager"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("ratio at batch 2 (ours / transformers tokens/s): ") and float(last.split()[-1]) > 0


@pytest.mark.e2e
def test_serve_load_bench_warms_the_server_and_no_request_compiles():
    import subprocess
    import sys

    from tests._paths import REPO, launch_env

    out = subprocess.run([sys.executable, "-m", "comd_jax.bench.serve_load", "--config=configs/comd.py:smoke",
                          "--clients=3", "--requests=2", "--max-tokens=4", "--limits=64,8,1"],
                         cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "6 done" in text and "server: warmed up True, compiles after the warm-up 0" in text
    assert out.stdout.strip().splitlines()[-1].startswith("ratio server / engine throughput: ")
