"""LLaVA-style model family in Flax NNX."""
from comd_jax.models.config import DecoderConfig, RopeConfig, VisionConfig, VLMConfig
from comd_jax.models.vlm import VLM

__all__ = ["DecoderConfig", "RopeConfig", "VisionConfig", "VLMConfig", "VLM"]
