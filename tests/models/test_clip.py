"""CLIP checkpoints as the vision tower of a plain Llama (how the original LLaVA
release is assembled): every hidden state equals transformers', the language
model still matches its Llama, and the projector starts fresh."""
import numpy as np
import pytest
import torch
from flax import nnx

import hf_tiny as H
from comd_jax import load_pretrained


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """(the vision module transformers runs, {layout: directory}) sharing one set of weights."""
    from transformers import CLIPConfig, CLIPModel

    tmp = tmp_path_factory.mktemp("clip")
    clip = H.randomize_(CLIPModel(CLIPConfig(
        vision_config=H.clip_vision_kwargs(num_hidden_layers=3), projection_dim=16,
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         vocab_size=50, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1))), 21)
    clip.save_pretrained(tmp / "clip_model")  # vision_model.* + text_model.* + projections
    vision_config = {**clip.config.vision_config.to_dict(), "model_type": "clip_vision_model"}
    tower = {k: v.numpy() for k, v in clip.vision_model.state_dict().items()}
    dirs = {
        "clip_model": str(tmp / "clip_model"),
        # CLIPVisionModel as transformers 4 wrote it, and as transformers 5 writes it.
        "vision_model_v4": H.write_checkpoint(tmp / "v4", vision_config, {
            **{"vision_model." + k: v for k, v in tower.items()},
            # a buffer older checkpoints carry: known, and ignored
            "vision_model.embeddings.position_ids": np.arange(H.PATCHES + 1)[None]}),
        "vision_model_v5": H.write_checkpoint(tmp / "v5", vision_config, tower),
    }
    assert any(k.startswith("text_model.") for k in H.read_tensors(dirs["clip_model"]))
    return clip.vision_model, dirs


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    ref = H.llama(12)
    directory = tmp_path_factory.mktemp("llama_for_clip") / "llama"
    ref.save_pretrained(directory)
    return ref, str(directory)


@nnx.jit(static_argnames="depths")
def _hidden_states(model, pixels_nhwc, depths):
    # One compiled program for every depth (and every layout: same config).
    return [model.vision.hidden_state(pixels_nhwc, d) for d in depths]


@pytest.mark.parametrize("layout", ["clip_model", "vision_model_v4", "vision_model_v5"])
def test_every_hidden_state_matches(layout, towers, llama_dir):
    vision_ref, dirs = towers
    _, text_dir = llama_dir
    ours = load_pretrained(text_dir, vision_tower=dirs[layout], image_token_id=H.IMAGE_TOKEN)
    pixels = np.random.default_rng(1).standard_normal((2, 3, H.IMAGE_SIZE, H.IMAGE_SIZE)).astype(np.float32)
    with torch.no_grad():
        want = vision_ref(torch.from_numpy(pixels), output_hidden_states=True).hidden_states
    depth_count = ours.cfg.vision.num_layers + 1
    assert len(want) == depth_count == 4
    got = _hidden_states(ours, pixels.transpose(0, 2, 3, 1), tuple(range(depth_count)))
    for depth in range(depth_count):
        assert H.rel_err(got[depth], want[depth].numpy()) < 1e-4, f"hidden_states[{depth}]"


def test_language_model_and_fresh_projector(towers, llama_dir):
    text_ref, text_dir = llama_dir
    _, dirs = towers
    ours = load_pretrained(text_dir, vision_tower=dirs["clip_model"], image_token_id=H.IMAGE_TOKEN,
                           projector="mlp2x_gelu", seed=3)
    assert ours.cfg.image_token_id == H.IMAGE_TOKEN and ours.cfg.num_image_tokens == H.PATCHES
    kernel = np.asarray(ours.projector.layers[0].kernel[...])
    assert kernel.shape == (32, 32) and 0.005 < kernel.std() < 0.1  # fresh init, not zeros
    ids = np.random.default_rng(2).integers(0, H.IMAGE_TOKEN, (2, 12))
    assert H.rel_err(ours.logits(ids), H.torch_logits(text_ref, ids)) < 1e-4


def test_attaching_a_tower_needs_the_image_token(towers, llama_dir):
    _, dirs = towers
    with pytest.raises(ValueError, match="image_token_id"):
        load_pretrained(llama_dir[1], vision_tower=dirs["clip_model"])
