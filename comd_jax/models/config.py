"""Validated, frozen model settings.

Each module receives only its own dataclass (never the experiment ConfigDict),
so a 7B config and a laptop config run through the very same code.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str):
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}") from None


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding settings, covering transformers' `rope_scaling` types."""

    theta: float = 10000.0
    type: str = "default"  # default | linear | dynamic | yarn | llama3 | longrope
    factor: float = 1.0
    original_max_position_embeddings: Optional[int] = None
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    mscale: Optional[float] = None  # yarn
    mscale_all_dim: Optional[float] = None  # yarn
    attention_factor: Optional[float] = None  # yarn, longrope
    truncate: bool = True  # yarn
    partial_rotary_factor: float = 1.0
    short_factor: Optional[tuple] = None  # longrope
    long_factor: Optional[tuple] = None  # longrope


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """A Llama-family decoder (Llama 1-3, Vicuna, Mistral-style GQA)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: Optional[int] = None
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    rope: RopeConfig = RopeConfig()
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """A CLIP-style ViT."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"vision hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


_MLP_PROJECTOR = re.compile(r"^mlp(\d+)x_gelu$")


def projector_depth(kind: str) -> int:
    """LLaVA's projector names: `linear` or `mlp{N}x_gelu`."""
    if kind == "linear":
        return 1
    match = _MLP_PROJECTOR.match(kind)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"unknown projector {kind!r}; use 'linear' or 'mlp{{N}}x_gelu' (e.g. mlp2x_gelu)")
    return int(match.group(1))


# The decoder block's linear layers, by attribute name (q/k/v/o attention, gate/up/down MLP).
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    """Vision tower + projector + decoder, LLaVA style. `vision=None` is a text-only LLM."""

    text: DecoderConfig
    vision: Optional[VisionConfig] = None
    projector: str = "mlp2x_gelu"
    projector_bias: bool = True
    projector_act: str = "gelu"
    image_token_id: int = -1
    feature_layer: int = -2
    select_strategy: str = "default"  # default: drop CLS; full: keep it
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype; bfloat16 on accelerators
    remat: bool = False
    # Inline every layer instead of scanning them: faster on CPU for shallow models,
    # but compile time grows with depth (leave False at 7B scale).
    unroll_layers: bool = False
    # LoRA on the decoder's linear layers (comd_jax.models.lora); rank 0 = off.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple = LORA_TARGETS

    def __post_init__(self):
        projector_depth(self.projector)
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))  # lists from configs
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = no LoRA), got {self.lora_rank}")
        unknown = set(self.lora_targets) - set(LORA_TARGETS)
        if unknown or (self.lora_rank and not self.lora_targets):
            raise ValueError(f"lora_targets {list(self.lora_targets)}: choose a non-empty subset of "
                             f"{list(LORA_TARGETS)}")
        dtype_of(self.param_dtype)
        dtype_of(self.dtype)
        if self.select_strategy not in ("default", "full"):
            raise ValueError(f"select_strategy must be 'default' or 'full', got {self.select_strategy!r}")
        if self.vision is not None:
            n = self.vision.num_layers
            if not -(n + 1) <= self.feature_layer <= n:
                raise ValueError(
                    f"feature_layer={self.feature_layer} out of range for a {n}-layer vision tower")

    @property
    def feature_depth(self) -> int:
        """How many vision layers run: hidden_states[i] is the output of layer i (0 = embeddings)."""
        return self.feature_layer % (self.vision.num_layers + 1)

    @property
    def num_image_tokens(self) -> int:
        """Placeholder tokens one image expands to."""
        if self.vision is None:
            return 0
        return self.vision.num_patches + (1 if self.select_strategy == "full" else 0)
