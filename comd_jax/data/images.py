"""Image loading and LLaVA-1.5 preprocessing, settings read from a transformers config.

LLaVA-1.5 pads each image to a square with the processor's mean colour, then
runs the CLIP processor (resize shortest edge, centre crop, rescale,
normalize). After padding the crop is a no-op, so this is: pad -> resize ->
normalize. Settings come from a `preprocessor_config.json` (what
`CLIPImageProcessor.save_pretrained` writes) so any CLIP-style tower works.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Union

import numpy as np
from PIL import Image

from comd_jax.data import errors

# A path, encoded bytes (PNG/JPEG), or a uint8 [H, W, 3] array.
ImageInput = Union[str, bytes, np.ndarray]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    size: int  # output height and width
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: int = Image.Resampling.BICUBIC
    pad_to_square: bool = True

    def __post_init__(self):
        if self.size <= 0 or len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"bad image processor config: {self}")

    @classmethod
    def from_pretrained(cls, path: str, *, pad_to_square: bool = True) -> "ImageProcessorConfig":
        """Reads a transformers image-processor config (a directory or the JSON file)."""
        if os.path.isdir(path):
            path = os.path.join(path, "preprocessor_config.json")
        with open(path) as f:
            config = json.load(f)
        return cls(
            size=_output_size(config),
            mean=tuple(config.get("image_mean", CLIP_MEAN)),
            std=tuple(config.get("image_std", CLIP_STD)),
            resample=int(config.get("resample", Image.Resampling.BICUBIC)),
            pad_to_square=pad_to_square,
        )

    def to_transformers_dict(self) -> dict:
        """A CLIPImageProcessor config with these settings (for save/interchange)."""
        return {
            "image_processor_type": "CLIPImageProcessor",
            "crop_size": {"height": self.size, "width": self.size},
            "size": {"shortest_edge": self.size},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "rescale_factor": 1 / 255,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "resample": int(self.resample),
        }

    @property
    def background(self) -> tuple[int, int, int]:
        """The padding colour: the normalization mean in 0..255, as LLaVA-1.5 pads."""
        return tuple(int(m * 255) for m in self.mean)


def _output_size(config: dict) -> int:
    crop = config.get("crop_size")
    if config.get("do_center_crop", True) and isinstance(crop, dict) and "height" in crop:
        return int(crop["height"])
    if isinstance(crop, int):
        return crop
    size = config.get("size")
    if isinstance(size, dict):
        return int(size.get("shortest_edge", size.get("height")))
    return int(size)


def load_image(image: ImageInput) -> Image.Image:
    """Decodes an image fully (so truncation surfaces here); raises SampleError."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise errors.SampleError(
                errors.UNREADABLE_IMAGE,
                f"array image must be uint8 [H, W, C], got {image.dtype} " f"{image.shape}",
            )
        return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
    if isinstance(image, str) and not os.path.isfile(image):
        raise errors.SampleError(errors.MISSING_IMAGE, f"no file {image}")
    try:
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as opened:
            opened.load()
            return opened.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        where = image if isinstance(image, str) else f"{len(image)} encoded bytes"
        raise errors.SampleError(errors.UNREADABLE_IMAGE, f"{where}: {e}") from None


def preprocess(image: Image.Image, config: ImageProcessorConfig) -> np.ndarray:
    """RGB image -> float32 [size, size, 3], padded, resized and normalized."""
    if config.pad_to_square:
        image = _pad_to_square(image, config.background)
    if image.size != (config.size, config.size):
        image = _resize_and_crop(image, config)
    pixels = np.asarray(image, np.float32) * np.float32(1 / 255)
    return (pixels - np.asarray(config.mean, np.float32)) / np.asarray(config.std, np.float32)


def _pad_to_square(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), colour)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def _resize_and_crop(image: Image.Image, config: ImageProcessorConfig) -> Image.Image:
    # Shortest edge to `size`, then a centre crop, as CLIPImageProcessor does
    # for images that were not padded.
    width, height = image.size
    scale = config.size / min(width, height)
    new_size = (max(config.size, round(width * scale)), max(config.size, round(height * scale)))
    image = image.resize(new_size, resample=config.resample)
    left = (new_size[0] - config.size) // 2
    top = (new_size[1] - config.size) // 2
    return image.crop((left, top, left + config.size, top + config.size))
