"""Analytic model FLOPs of one LLaVA train step (matmuls only, PaLM-style MFU accounting).

Counted: every matmul the model must do, forward and backward, including
attention scores and the full (unmasked) T x T attention, as MFU figures
conventionally do. Not counted: norms, activations, softmax, the optimizer —
work a faster implementation cannot remove is still not "model FLOPs".

Backward costs 2x forward for a matmul whose weight trains and whose input
needs a gradient, 1x when only one of the two does, 0x when neither: the
frozen vision tower runs forward only, the projector's first layer has no
input gradient to compute.
"""
from __future__ import annotations

from comd_jax.models.config import VLMConfig, projector_depth


def decoder_matmul_params(cfg: VLMConfig) -> int:
    """Weights each text token multiplies through (embedding lookup excluded, lm_head included)."""
    t = cfg.text
    attn = t.hidden_size * t.head_dim * (2 * t.num_heads + 2 * t.num_kv_heads)
    mlp = 3 * t.hidden_size * t.intermediate_size
    return t.num_layers * (attn + mlp) + t.hidden_size * t.vocab_size


def train_step_flops(cfg: VLMConfig, batch: int, seq_len: int, images_per_sample: int,
                     head_positions: int | None = None) -> dict:
    """Model FLOPs of one step, split by part; vision frozen, projector and LLM trained.

    `head_positions`: the positions per row the step keeps for the loss
    (train/targets.py); there the LM head runs, and the last decoder block runs its
    queries, output projection and MLP. Default every position, as the
    conventional count and transformers do."""
    t = cfg.text
    tokens = batch * seq_len
    text = 6 * tokens * decoder_matmul_params(cfg)
    # QK^T and PV: 2 matmuls of 2*T*T*head_dim per head, forward; x3 with backward.
    attention_layer = 3 * batch * 2 * (2 * seq_len * seq_len * t.head_dim * t.num_heads)
    text += t.num_layers * attention_layer
    if head_positions is not None:
        dropped = batch * (seq_len - head_positions)
        per_position = t.hidden_size * t.vocab_size + (
            2 * t.hidden_size * t.head_dim * t.num_heads + 3 * t.hidden_size * t.intermediate_size)
        text -= 6 * dropped * per_position
        text -= attention_layer * (seq_len - head_positions) // seq_len
    out = {"text": text, "projector": 0, "vision": 0}
    if cfg.vision is not None:
        v = cfg.vision
        images = batch * images_per_sample
        patches = v.num_patches + 1
        layers = cfg.feature_depth
        per_token = layers * (4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.intermediate_size)
        patch_dim = v.patch_size ** 2 * v.num_channels
        forward = 2 * images * patches * per_token + 2 * images * v.num_patches * patch_dim * v.hidden_size
        forward += layers * images * 2 * (2 * patches * patches * v.hidden_size)
        out["vision"] = forward
        feats = images * cfg.num_image_tokens
        depth = projector_depth(cfg.projector)
        first = v.hidden_size * t.hidden_size
        rest = (depth - 1) * t.hidden_size * t.hidden_size
        out["projector"] = 4 * feats * first + 6 * feats * rest
    out["total"] = out["text"] + out["projector"] + out["vision"]
    return out
