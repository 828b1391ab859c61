"""LoRA: training only the adapters changes only the adapters; the merged model, the
transformers export and PEFT-layout adapter files all give the adapted model's logits;
rank 0 leaves the model exactly as it was."""
import dataclasses

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from flax.traverse_util import flatten_dict

import hf_tiny as H
from comd_jax import load_pretrained, save_pretrained
from comd_jax import sharding as shd
from comd_jax.config import model_config
from comd_jax.convert.adapters import load_lora, save_lora
from comd_jax.models import build
from comd_jax.models.build import merge_lora
from comd_jax.models.lora import LoraDense, is_adapter
from comd_jax.train.optim import OptimConfig, count
from comd_jax.train.state import create_setup, init_state
from comd_jax.train.step import build_train_step, host_batch

RANK, ALPHA = 4, 8.0


def _flat(params) -> dict:
    return {k: np.asarray(v) for k, v in flatten_dict(params).items()}


def _train_batch(cfg, b=4, t=28, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, H.IMAGE_TOKEN, (b, t)).astype(np.int32)
    ids[:, 1:1 + cfg.num_image_tokens] = cfg.image_token_id
    mask = np.ones((b, t), np.int32)
    mask[1, -4:] = 0
    loss = ((np.arange(t) > cfg.num_image_tokens)[None] & (mask == 1)).astype(np.float32)
    pixels = rng.standard_normal((b, 1, H.IMAGE_SIZE, H.IMAGE_SIZE, 3)).astype(np.float32)
    return dict(input_ids=ids, attention_mask=mask, loss_mask=loss, pixel_values=pixels)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny transformers LLaVA, loaded with fresh adapters, 3 adapter-only train steps."""
    directory = tmp_path_factory.mktemp("lora") / "base"
    torch_base = H.llava(7, H.llama_kwargs(), H.clip_vision_kwargs())
    torch_base.save_pretrained(directory)
    model = load_pretrained(str(directory), lora_rank=RANK, lora_alpha=ALPHA)
    optim = OptimConfig(learning_rate=1e-2, warmup_ratio=0.0, total_steps=10, trainable=("text/.*lora_.*",))
    setup = create_setup(model.cfg, optim, shd.make_mesh((1, 1, 1), jax.devices()[:1]))
    state = init_state(setup, params=nnx.state(model).to_pure_dict())
    before = _flat(state.params)
    step = build_train_step(setup)
    batch = host_batch(_train_batch(model.cfg), setup)
    for i in range(3):  # B starts at 0, so A's gradient is 0 until B has moved
        state, _ = step(state, batch, jax.random.key(i))
    return dict(torch_base=torch_base, setup=setup, before=before, after=_flat(state.params),
                model=setup.model(state.params), fresh=model)


def test_training_only_adapters_changes_only_adapters(trained):
    before, after, setup = trained["before"], trained["after"], trained["setup"]
    assert before.keys() == after.keys()
    adapters = [p for p in before if is_adapter(p)]
    assert len(adapters) == 2 * 7  # a and b for q, k, v, o, gate, up, down
    assert count(trained["setup"].abstract_state.params, setup.labels) == sum(before[p].size for p in adapters)
    for path in before:
        if is_adapter(path):
            assert not np.array_equal(before[path], after[path]), f"{path} did not train"
        else:
            np.testing.assert_array_equal(before[path], after[path], err_msg=f"{path} changed")


def test_merged_and_exported_models_match_the_adapted_logits(trained, tmp_path):
    from transformers import LlavaForConditionalGeneration

    adapted = trained["model"]
    merged = merge_lora(adapted)
    assert merged.cfg.lora_rank == 0
    assert not any(is_adapter(p) for p in flatten_dict(nnx.state(merged).to_pure_dict()))
    ids, mask, pixels = H.llava_batch(adapted.cfg.num_image_tokens)
    ours = np.asarray(adapted.logits(ids, pixels, mask))
    base = np.asarray(trained["fresh"].logits(ids, pixels, mask))
    assert H.rel_err(base, ours, mask) > 1e-3  # the adapters really change the function
    assert H.rel_err(merged.logits(ids, pixels, mask), ours, mask) < 1e-5

    save_pretrained(adapted, str(tmp_path))  # merges by itself
    theirs, info = LlavaForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert H.rel_err(H.torch_logits(theirs.eval(), ids, mask, pixels), ours, mask) < 1e-5


def test_adapter_files_round_trip_and_follow_peft_semantics(trained, tmp_path):
    adapted = trained["model"]
    save_lora(adapted, str(tmp_path))
    ids, mask, pixels = H.llava_batch(adapted.cfg.num_image_tokens)
    ours = np.asarray(adapted.logits(ids, pixels, mask))

    # Back onto the base model without adapters: the same adapted model.
    restored = load_lora(merge_lora(trained["fresh"]), str(tmp_path))  # fresh B = 0: merged = base
    assert restored.cfg.lora_rank == RANK and restored.cfg.lora_alpha == ALPHA
    want = _flat(nnx.state(adapted).to_pure_dict())
    for path, value in _flat(nnx.state(restored).to_pure_dict()).items():
        np.testing.assert_array_equal(value, want[path], err_msg=str(path))

    # PEFT's rule, W += alpha/r · B A on transformers' own modules, gives our logits.
    torch_model = trained["torch_base"]
    modules = dict(torch_model.named_modules())
    tensors = H.read_tensors(tmp_path)
    assert len(tensors) == 2 * 7 * torch_model.config.text_config.num_hidden_layers
    with torch.no_grad():
        originals = {}
        for key in [k for k in tensors if k.endswith(".lora_A.weight")]:
            name = key[len("base_model.model."):-len(".lora_A.weight")]
            weight = modules[name].weight
            originals[name] = weight.clone()
            a = torch.as_tensor(tensors[key])
            b = torch.as_tensor(tensors[key.replace("lora_A", "lora_B")])
            weight += (ALPHA / RANK) * b @ a
        try:
            assert H.rel_err(H.torch_logits(torch_model, ids, mask, pixels), ours, mask) < 1e-5
        finally:
            for name, weight in originals.items():
                modules[name].weight.copy_(weight)


def test_rank_zero_is_the_plain_model():
    text = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    cfg = model_config(dict(text=text))
    with_lora = model_config(dict(text=text, lora_rank=2, lora_targets=["q", "down"]))  # as configs set it
    assert with_lora.lora_targets == ("q", "down")
    graph0, abstract0 = build.abstract_model(cfg)
    _, abstract2 = build.abstract_model(with_lora)
    paths0 = set(flatten_dict(abstract0.to_pure_dict()))
    paths2 = set(flatten_dict(abstract2.to_pure_dict()))
    assert paths0 == {p for p in paths2 if not is_adapter(p)}
    assert {p for p in paths2 if is_adapter(p)} == {("text", "layers", t, k) for t in ("q", "down")
                                                    for k in ("lora_a", "lora_b")}
    assert not any(isinstance(m, LoraDense) for _, m in nnx.iter_graph(nnx.merge(graph0, abstract0)))
    # Adapters are added last: the base draws the same numbers with or without them.
    mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
    rules = shd.rules_for("fsdp")
    p0, p2 = (_flat(build.init_params(c, mesh, rules, seed=5)) for c in (cfg, with_lora))
    for path, value in p0.items():
        np.testing.assert_array_equal(value, p2[path], err_msg=str(path))
    with pytest.raises(ValueError, match="lora_targets"):
        dataclasses.replace(cfg, lora_rank=2, lora_targets=("query",))
