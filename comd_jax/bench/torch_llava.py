"""The peer: transformers' PyTorch LLaVA train step on the same weights and batch.

The torch model is loaded from a directory our `save_pretrained` wrote, so both
sides start from identical parameters and their first losses must agree — a
cheap check that the two steps compute the same thing.
"""
from __future__ import annotations

import numpy as np

IGNORE = -100  # transformers' label for "no loss here"


def load_model(directory: str, trainable=("model.multi_modal_projector.", "model.language_model.", "lm_head.")):
    """LlavaForConditionalGeneration in float32 with SDPA attention, vision tower frozen."""
    import torch
    import transformers

    model = transformers.LlavaForConditionalGeneration.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(trainable))
    return model


def to_torch_batch(batch: dict) -> dict:
    """Our training batch → transformers' LLaVA inputs (NCHW pixels, -100 labels)."""
    import torch

    ids = np.asarray(batch["input_ids"]).astype(np.int64)
    labels = np.where(np.asarray(batch["loss_mask"]) > 0, ids, IGNORE)
    px = np.asarray(batch["pixel_values"], np.float32)
    px = px.reshape(-1, *px.shape[2:]).transpose(0, 3, 1, 2)
    return {"input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(np.asarray(batch["attention_mask"]).astype(np.int64)),
            "pixel_values": torch.from_numpy(np.ascontiguousarray(px)),
            "labels": torch.from_numpy(labels)}


def make_step(model, lr: float = 1e-4, grad_clip: float = 1.0, fused: bool = True):
    """One AdamW step with global-norm clipping, the same update our optax chain makes.

    `fused=True` uses torch's fused CPU AdamW, its fastest optimizer kernel, so
    the peer is not handicapped by a per-tensor Python loop."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=fused)

    def step(inputs: dict) -> float:
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step
