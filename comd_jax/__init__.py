"""comd_jax: Competitive Multi-modal Distillation of LLaVA-style models in JAX/Flax NNX."""
from comd_jax.convert.hf import load_pretrained, save_pretrained

__all__ = ["load_pretrained", "save_pretrained"]
__version__ = "0.1.0"
