"""transformers config.json ⇄ our frozen model configs."""
from __future__ import annotations

import dataclasses
from typing import Optional

from comd_jax.models.config import DecoderConfig, RopeConfig, VisionConfig, VLMConfig

_ROPE_FIELDS = {f.name for f in dataclasses.fields(RopeConfig)}


def rope_from_hf(cfg: dict) -> RopeConfig:
    """Both spellings: v4 (`rope_theta` + `rope_scaling`) and v5 (`rope_parameters`)."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = merged.pop("rope_theta", cfg.get("rope_theta", 10000.0))
    kind = merged.pop("rope_type", merged.pop("type", "default"))
    if kind == "dynamic" and "original_max_position_embeddings" not in merged:
        merged["original_max_position_embeddings"] = cfg.get("max_position_embeddings")
    if kind in ("yarn", "llama3", "longrope"):
        # transformers' fallbacks: a top-level original length (Phi-3 style) wins, else
        # max_position_embeddings; a missing factor is the ratio of the two lengths.
        orig = (cfg.get("original_max_position_embeddings") or merged.get("original_max_position_embeddings")
                or cfg.get("max_position_embeddings"))
        merged["original_max_position_embeddings"] = orig
        if merged.get("factor") is None and kind != "llama3":
            merged["factor"] = cfg.get("max_position_embeddings", orig) / orig
    for key in ("short_factor", "long_factor"):
        if merged.get(key) is not None:
            merged[key] = tuple(merged[key])
    unknown = set(merged) - _ROPE_FIELDS
    if unknown:
        raise ValueError(f"rope settings {sorted(unknown)} are not supported (rope type {kind!r})")
    if merged.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("Llama decoders rotate the whole head; partial_rotary_factor != 1 is not supported")
    merged = {k: v for k, v in merged.items() if v is not None}
    return RopeConfig(theta=float(theta), type=kind, **merged)


def rope_to_hf(rope: RopeConfig) -> dict:
    out = {"rope_type": rope.type, "rope_theta": rope.theta}
    default = RopeConfig()
    if rope.type != "default":
        for f in dataclasses.fields(RopeConfig):
            value = getattr(rope, f.name)
            if f.name in ("theta", "type") or value is None or value == getattr(default, f.name):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out.setdefault("factor", rope.factor)
    return out


# transformers' LlamaConfig defaults. Sub-configs are often saved as a diff against
# them: llava-hf/llava-1.5-7b-hf's text_config holds only vocab, max positions and eps.
LLAMA_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6,
                      hidden_act="silu")


def decoder_from_hf(cfg: dict, tie_default: bool = False) -> DecoderConfig:
    if cfg.get("model_type", "llama") in ("llama", "llava_llama"):
        cfg = {**LLAMA_DEFAULTS, **cfg}
    heads = cfg["num_attention_heads"]
    return DecoderConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        rope=rope_from_hf(cfg),
        tie_word_embeddings=cfg.get("tie_word_embeddings", tie_default),
        attention_bias=cfg.get("attention_bias", False),
        mlp_bias=cfg.get("mlp_bias", False),
        hidden_act=cfg.get("hidden_act", "silu"),
    )


def vision_from_hf(cfg: dict) -> VisionConfig:
    return VisionConfig(
        hidden_size=cfg.get("hidden_size", 768),
        intermediate_size=cfg.get("intermediate_size", 3072),
        num_layers=cfg.get("num_hidden_layers", 12),
        num_heads=cfg.get("num_attention_heads", 12),
        image_size=cfg.get("image_size", 224),
        patch_size=cfg.get("patch_size", 32),
        num_channels=cfg.get("num_channels", 3),
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-5),
        hidden_act=cfg.get("hidden_act", "quick_gelu"),
    )


def vision_config_of(cfg: dict) -> Optional[dict]:
    """The vision part of a CLIP / CLIPVision / LLaVA config.json, or None."""
    kind = cfg.get("model_type")
    if kind == "clip_vision_model":
        return cfg
    if kind in ("clip", "llava"):
        return cfg.get("vision_config") or {}
    return None


def text_config_of(cfg: dict) -> Optional[dict]:
    kind = cfg.get("model_type")
    if kind == "llava":
        return cfg.get("text_config") or {}
    if kind in ("llama", "mistral", "llava_llama"):
        return cfg
    return None


def _feature_layer(value) -> int:
    if isinstance(value, (list, tuple)):
        raise ValueError(f"vision_feature_layer={value}: concatenating several layers is not supported")
    return int(value)


def vlm_from_hf(cfg: dict, **overrides) -> VLMConfig:
    """A LLaVA config.json (or plain Llama) → VLMConfig; overrides win."""
    text_cfg = text_config_of(cfg)
    if text_cfg is None:
        raise ValueError(f"config model_type {cfg.get('model_type')!r} has no language model "
                         "(expected llava, llama, mistral or llava_llama)")
    text = decoder_from_hf(text_cfg, tie_default=cfg.get("tie_word_embeddings", False))
    fields = dict(text=text)
    if cfg.get("model_type") == "llava":
        fields.update(
            vision=vision_from_hf(vision_config_of(cfg)),
            projector="mlp2x_gelu",
            projector_bias=cfg.get("multimodal_projector_bias", True),
            projector_act=cfg.get("projector_hidden_act", "gelu"),
            image_token_id=cfg.get("image_token_index", cfg.get("image_token_id", 32000)),
            feature_layer=_feature_layer(cfg.get("vision_feature_layer", -2)),
            select_strategy=cfg.get("vision_feature_select_strategy", "default"),
        )
    elif cfg.get("model_type") == "llava_llama":  # the original LLaVA release
        fields.update(
            projector=cfg.get("mm_projector_type", "linear"),
            feature_layer=int(cfg.get("mm_vision_select_layer", -2)),
            select_strategy="full" if cfg.get("mm_vision_select_feature") == "cls_patch" else "default",
            image_token_id=overrides.get("image_token_id", cfg.get("image_token_index", -1)),
        )
    fields.update(overrides)
    return VLMConfig(**fields)


def decoder_to_hf(cfg: DecoderConfig) -> dict:
    return dict(
        model_type="llama",
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters=rope_to_hf(cfg.rope),
        tie_word_embeddings=cfg.tie_word_embeddings,
        attention_bias=cfg.attention_bias,
        mlp_bias=cfg.mlp_bias,
        hidden_act=cfg.hidden_act,
    )


def vision_to_hf(cfg: VisionConfig) -> dict:
    return dict(
        model_type="clip_vision_model",
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_channels=cfg.num_channels,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act=cfg.hidden_act,
    )
