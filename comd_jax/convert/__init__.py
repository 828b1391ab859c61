"""Hugging Face (transformers-format safetensors) interchange."""
from comd_jax.convert.hf import load_pretrained, save_pretrained

__all__ = ["load_pretrained", "save_pretrained"]
