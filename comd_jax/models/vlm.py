"""The multimodal model: vision tower → projector → features spliced into the
decoder's token embeddings at the image-token positions.

Image tokens consume image features in reading order. Two layouts feed it:
- training batches: `pixel_values` [B, M, H, W, C] (up to M images per sample;
  sample b's image tokens take features of its own images, in order);
- transformers' convention (`logits`): `pixel_values` [N, C, H, W] or NHWC,
  all images of the batch flattened in order of appearance.
Text-only samples simply have no image tokens.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from comd_jax.models.config import VLMConfig, dtype_of
from comd_jax.models.decoder import Decoder
from comd_jax.models import lora
from comd_jax.models.projector import Projector
from comd_jax.models.vision import VisionTower


def splice_features(embeds_btd, is_image_bt, feats_fd, row_offsets_b):
    """Replace image-token embeddings with features; token j of row b takes feature
    row_offsets[b] + (index of j among row b's image tokens)."""
    index = row_offsets_b[:, None] + jnp.cumsum(is_image_bt, axis=1) - 1
    index = jnp.clip(index, 0, feats_fd.shape[0] - 1)
    gathered = jnp.take(feats_fd, index, axis=0).astype(embeds_btd.dtype)
    return jnp.where(is_image_bt[..., None], gathered, embeds_btd)


def to_nhwc(pixel_values, channels: int):
    """Accept NCHW (what transformers passes) or NHWC."""
    if pixel_values.ndim == 4 and pixel_values.shape[1] == channels and pixel_values.shape[-1] != channels:
        return jnp.transpose(pixel_values, (0, 2, 3, 1))
    return pixel_values


class VLM(nnx.Module):
    def __init__(self, cfg: VLMConfig, *, rngs: nnx.Rngs, rules=None):
        self.cfg = cfg
        self.rules = rules
        kw = dict(param_dtype=dtype_of(cfg.param_dtype), dtype=dtype_of(cfg.dtype))
        self.text = Decoder(cfg.text, rngs=rngs, remat=cfg.remat, unroll=cfg.unroll_layers, rules=rules, **kw)
        if cfg.vision is None:
            self.vision = self.projector = None
        else:
            self.vision = VisionTower(cfg.vision, rngs=rngs, remat=cfg.remat, unroll=cfg.unroll_layers,
                                      rules=rules, **kw)
            self.projector = Projector(cfg.projector, cfg.vision.hidden_size, cfg.text.hidden_size,
                                       bias=cfg.projector_bias, act=cfg.projector_act, rngs=rngs, **kw)
        if cfg.lora_rank:
            # Last, so the base parameters draw the same random numbers with or without LoRA.
            lora.add_adapters(self.text.layers, cfg, rngs)

    # -- pieces ---------------------------------------------------------------
    def image_features(self, pixels_nhwc: jax.Array) -> jax.Array:
        """[N, H, W, C] images → [N, num_image_tokens, text hidden] projected features."""
        feats = self.vision.hidden_state(pixels_nhwc, self.cfg.feature_depth)
        if self.cfg.select_strategy == "default":
            feats = feats[:, 1:]
        return self.projector(feats)

    def embed(self, input_ids_bt, pixels_nhwc=None, row_offsets_b=None):
        is_image = input_ids_bt == self.cfg.image_token_id
        embeds = self.text.embed_tokens(jnp.where(is_image, 0, input_ids_bt))
        if pixels_nhwc is None or self.vision is None:
            return embeds
        feats = self.image_features(pixels_nhwc)
        feats = feats.reshape(-1, feats.shape[-1])
        return splice_features(embeds, is_image, feats, row_offsets_b)

    # -- training / scoring -----------------------------------------------------
    def __call__(self, input_ids, pixel_values=None, attention_mask=None, positions=None):
        """Training layout: pixel_values [B, M, H, W, C]. Returns float32 logits [B, T, V]."""
        return self.text.logits(self.hidden_states(input_ids, pixel_values, attention_mask, positions))

    def hidden_states(self, input_ids, pixel_values=None, attention_mask=None, positions=None, keep=None):
        """The decoder's final (normed) hidden states [B, T, D], before the LM head; with
        `keep` [B, K], only at those positions, [B, K, D] (the train step keeps the ones
        that predict a target, and the last block skips the rest: Decoder.__call__)."""
        b, t = input_ids.shape
        pixels, offsets = None, None
        if pixel_values is not None and self.vision is not None:
            m = pixel_values.shape[1]
            pixels = pixel_values.reshape(b * m, *pixel_values.shape[2:])
            offsets = jnp.arange(b) * (m * self.cfg.num_image_tokens)
        embeds = self.embed(input_ids, pixels, offsets)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        hidden, _ = self.text(embeds, positions, attention_mask, keep_bk=keep)
        return hidden

    def logits(self, input_ids, pixel_values=None, attention_mask=None):
        """transformers' LLaVA convention: each image's placeholder repeated once per
        feature, pixel_values [N, C, H, W] (or NHWC) for all images in order."""
        input_ids = jnp.asarray(input_ids)
        pixels, offsets = self.images_in_order(input_ids, pixel_values)
        if attention_mask is not None:
            attention_mask = jnp.asarray(attention_mask)
        return _logits_jit(self, input_ids, pixels, offsets, attention_mask)

    def images_in_order(self, input_ids, pixel_values):
        """transformers' convention → (NHWC pixels, each row's first feature index), or
        (None, None) without images. Runs on the host: counts must be concrete."""
        if pixel_values is None or self.vision is None:
            return None, None
        pixels = to_nhwc(jnp.asarray(pixel_values), self.cfg.vision.num_channels)
        counts = np.asarray(input_ids == self.cfg.image_token_id).sum(axis=1)
        expected = pixels.shape[0] * self.cfg.num_image_tokens
        if counts.sum() != expected:
            raise ValueError(
                f"input_ids hold {int(counts.sum())} image tokens (id {self.cfg.image_token_id}) but "
                f"{pixels.shape[0]} image(s) give {expected} features "
                f"({self.cfg.num_image_tokens} per image)")
        return pixels, jnp.asarray(np.concatenate([[0], np.cumsum(counts)[:-1]]))

    # -- incremental decoding ---------------------------------------------------
    def init_cache(self, batch: int, slots: int, dtype=None) -> dict:
        return self.text.init_cache(batch, slots, dtype)

    def decode(self, embeds_btd, positions_bt, cache):
        """Run embeddings at the given positions through the cached decoder:
        returns float32 logits [B, T, V] and the new cache."""
        hidden, cache = self.text(embeds_btd, positions_bt, None, cache)
        return self.text.logits(hidden), cache


@nnx.jit
def _logits_jit(model: VLM, input_ids, pixels, offsets, attention_mask):
    embeds = model.embed(input_ids, pixels, offsets)
    b, t = input_ids.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    hidden, _ = model.text(embeds, positions, attention_mask)
    return model.text.logits(hidden)
