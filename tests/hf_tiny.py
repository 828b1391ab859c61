"""Tiny random transformers checkpoints, built by the parity tests themselves.

Every parameter is redrawn (norm weights too, around 1), so a swapped, transposed
or misplaced tensor changes the logits; transformers' own init leaves norms at
exactly 1 and biases at 0, which would hide such mistakes.
"""
from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import torch
from safetensors.numpy import save_file
from safetensors import safe_open

VOCAB = 96
IMAGE_TOKEN = 95  # last id: the image placeholder
IMAGE_SIZE, PATCH = 16, 4
PATCHES = (IMAGE_SIZE // PATCH) ** 2  # 16 features per image ('default' selection)


def llama_kwargs(**overrides) -> dict:
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
              pad_token_id=0)
    kw.update(overrides)
    return kw


def clip_vision_kwargs(**overrides) -> dict:
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              image_size=IMAGE_SIZE, patch_size=PATCH)
    kw.update(overrides)
    return kw


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Redraw every parameter with a scale that keeps activations O(1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias") or p.ndim == 1:
                p.copy_(0.2 * noise)
            elif "embed" in name and p.ndim == 2 and "patch" not in name:
                p.copy_(noise)  # token / position embeddings
            else:
                p.copy_(noise / math.sqrt(int(np.prod(p.shape[1:]))))
    return model.eval()


def llava(seed: int, text: dict, vision: dict, **llava_kw):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**vision).to_dict(),
                      text_config=LlamaConfig(**text).to_dict(), image_token_index=IMAGE_TOKEN,
                      image_seq_length=PATCHES, tie_word_embeddings=text.get("tie_word_embeddings", False),
                      **llava_kw)
    return randomize_(LlavaForConditionalGeneration(cfg), seed)


def llama(seed: int, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    return randomize_(LlamaForCausalLM(LlamaConfig(**llama_kwargs(**overrides))), seed)


# -- checkpoint surgery -----------------------------------------------------------


def read_tensors(directory: str) -> dict:
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(directory, name), "np") as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def write_checkpoint(directory: str, config: dict, tensors: dict) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    return directory


def rename(src: str, dst: str, fn) -> str:
    """Copy a checkpoint, renaming each key with fn (None drops it)."""
    tensors = {fn(k): v for k, v in read_tensors(src).items() if fn(k) is not None}
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    return write_checkpoint(dst, config, tensors)


def with_config(src: str, dst: str, config: dict) -> str:
    """Same weights (linked), another config.json."""
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name.endswith(".safetensors") or name.endswith(".index.json"):
            os.symlink(os.path.join(src, name), os.path.join(dst, name))
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return dst


def copy(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    return dst


# -- inputs and comparisons -------------------------------------------------------


def llava_batch(image_tokens: int, seed: int = 0):
    """Three right-padded rows: two images, text only, one image (transformers' convention).
    Returns input_ids [3, T], attention_mask [3, T], pixel_values [3, C, H, W]."""
    rng = np.random.default_rng(seed)
    text = lambda n: list(rng.integers(3, IMAGE_TOKEN, n))
    img = [IMAGE_TOKEN] * image_tokens
    rows = [[1] + text(2) + img + text(3) + img + text(4),
            [1] + text(9),
            [1] + text(3) + img + text(5)]
    t = max(map(len, rows))
    ids = np.zeros((3, t), np.int64)
    mask = np.zeros((3, t), np.int64)
    for b, row in enumerate(rows):
        ids[b, :len(row)], mask[b, :len(row)] = row, 1
    pixels = rng.standard_normal((3, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    return ids, mask, pixels


def torch_logits(model, input_ids, attention_mask=None, pixel_values=None) -> np.ndarray:
    kw = {"input_ids": torch.as_tensor(input_ids)}
    if attention_mask is not None:
        kw["attention_mask"] = torch.as_tensor(attention_mask)
    if pixel_values is not None:
        kw["pixel_values"] = torch.as_tensor(pixel_values)
    with torch.no_grad():
        return model(**kw).logits.float().numpy()


def rel_err(ours, ref, mask=None) -> float:
    """max |ours - ref| / max |ref|, over real (mask == 1) positions when a mask is given."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if mask is not None:
        keep = np.asarray(mask).astype(bool)
        ours, ref = ours[keep], ref[keep]
    return float(np.abs(ours - ref).max() / np.abs(ref).max())
