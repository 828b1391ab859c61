"""comd_jax: Competitive Multi-modal Distillation of LLaVA-style models in JAX/Flax NNX."""
__all__ = ["load_pretrained", "save_pretrained"]
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `import comd_jax.data` should not pay for the model and converter imports.
    if name in __all__:
        from comd_jax.convert import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'comd_jax' has no attribute {name!r}")
