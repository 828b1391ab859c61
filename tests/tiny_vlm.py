"""The tiny LLaVA-shaped model the engine, serving and probe tests share: a 2-layer decoder
(GQA, 4 heads over 2 kv heads) and a 1-layer vision tower whose 16 px images become 16
placeholder tokens of id IMAGE."""
from comd_jax.models.build import build_model
from comd_jax.models.config import DecoderConfig, VisionConfig, VLMConfig

IMAGE, PATCHES = 4, 16


def tiny_vlm_config(hidden: int = 32, max_positions: int = 128) -> VLMConfig:
    return VLMConfig(text=DecoderConfig(vocab_size=96, hidden_size=hidden, intermediate_size=64, num_layers=2,
                                        num_heads=4, num_kv_heads=2, max_position_embeddings=max_positions),
                     vision=VisionConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                                         image_size=16, patch_size=4),
                     image_token_id=IMAGE, projector="linear")


def tiny_vlm(seed: int, **kw):
    return build_model(tiny_vlm_config(**kw), seed=seed)
