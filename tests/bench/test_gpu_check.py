"""gpu_check runs end to end at a trivial size on CPU (the real run needs an H100/H200).

No timing is asserted: the numbers belong in BENCHMARKS.md.
"""
import math

import numpy as np
import pytest

pytestmark = pytest.mark.e2e  # slow: the quick loop is pytest -m "not e2e"

pytest.importorskip("torch")


def test_gpu_check_tiny_runs_both_sides_and_generation():
    from comd_jax.bench import gpu_check

    r = gpu_check.run(gpu_check.TINY, rounds=1, steps=1, tiny=True)
    # Same weights (saved by us, loaded by transformers in the child process), same batch.
    np.testing.assert_allclose(r["first_loss"]["ours"], r["first_loss"]["torch"], rtol=1e-4)
    assert r["ratio"] > 0 and r["generation"]["tokens_per_s"] > 0
    assert r["mfu"] is None  # no known peak for a CPU: printed as n/a, not invented


def test_default_size_is_a_one_billion_parameter_llava():
    from jax.tree_util import tree_leaves

    from comd_jax.bench import gpu_check, train_step
    from comd_jax.models import build

    cfg = train_step.model_config(gpu_check.ONE_B, dtype="bfloat16", remat=True)
    _, abstract = build.abstract_model(cfg)  # shapes only
    params = abstract.to_pure_dict()
    text = sum(math.prod(x.shape) for x in tree_leaves(params["text"]))
    assert 0.9e9 < text < 1.3e9
    assert cfg.num_image_tokens == 576  # CLIP ViT-L/14 at 336 px, as LLaVA-1.5
