"""The one interface evaluators generate through, and its in-process implementation.

Evaluators build `Request`s (a conversation ending in a user turn, plus its
images) and call `Answerer.answer`. `GreedyAnswerer` runs our model with
`greedy_generate`; the batched serving engine (comd_jax.serve) or an HTTP
teacher can implement the same protocol later without touching evaluators.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Protocol, Sequence

import jax
import numpy as np

from comd_jax.data import images as images_lib
from comd_jax.data.processing import _pad_id
from comd_jax.data.templates import IMAGE_PLACEHOLDER, USER, get_template
from comd_jax.data.tokenize import image_token_id


@dataclasses.dataclass(frozen=True)
class Request:
    messages: tuple[tuple[str, str], ...]  # (role, text), user first, ends with a user turn
    images: tuple = ()  # one images.ImageInput per <image> placeholder, in order


def ask(prompt: str, image=None) -> Request:
    """A single-turn request; with an image, the prompt should hold one <image>."""
    return Request(((USER, prompt),), () if image is None else (image,))


class Answerer(Protocol):
    def answer(self, requests: Sequence[Request]) -> list[str]:
        """One reply per request, in order."""


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class GreedyAnswerer:
    """Our model + tokenizer + template + image preprocessing, decoded greedily.

    Batches have a fixed row count and lengths rounded up to `length_multiple`,
    so a whole benchmark compiles only a few shapes.
    """

    def __init__(self, model, tokenizer, image_config: images_lib.ImageProcessorConfig, *,
                 template: str = "vicuna_v1", max_new_tokens: int = 64, batch_size: int = 8,
                 length_multiple: int = 64, progress: Optional[str] = None):
        self.model, self.tokenizer, self.image_config = model, tokenizer, image_config
        self.template = get_template(template)
        self.max_new_tokens, self.batch_size, self.length_multiple = max_new_tokens, batch_size, length_multiple
        self.progress = progress  # a label: show a progress bar (process 0) while answering
        self.image_id = image_token_id(tokenizer)
        self.pad_id = _pad_id(tokenizer)
        self.num_image_tokens = model.cfg.num_image_tokens if model.cfg.vision is not None else 0

    def encode(self, request: Request) -> tuple[np.ndarray, np.ndarray]:
        """(prompt ids with image placeholders expanded, float32 pixels [N, S, S, 3])."""
        text = self.template.render_prompt(list(request.messages), bos=self.tokenizer.bos_token or "",
                                           eos=self.tokenizer.eos_token or "")
        if text.count(IMAGE_PLACEHOLDER) != len(request.images):
            raise ValueError(f"{text.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} placeholder(s) but "
                             f"{len(request.images)} image(s)")
        ids = np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)
        ids = np.repeat(ids, np.where(ids == self.image_id, self.num_image_tokens, 1))
        size = self.image_config.size
        pixels = np.zeros((len(request.images), size, size, 3), np.float32)
        for i, image in enumerate(request.images):
            pixels[i] = images_lib.preprocess(images_lib.load_image(image), self.image_config)
        return ids, pixels

    def answer(self, requests: Sequence[Request]) -> list[str]:
        replies: list[str] = []
        bar = None
        if self.progress and jax.process_index() == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(requests), desc=self.progress, unit="answer", dynamic_ncols=True)
        for start in range(0, len(requests), self.batch_size):
            replies += self._batch([self.encode(r) for r in requests[start:start + self.batch_size]])
            if bar is not None:
                bar.update(min(self.batch_size, len(requests) - start))
        if bar is not None:
            bar.close()
        return replies

    def _batch(self, encoded: list) -> list[str]:
        from comd_jax.models.generate import greedy_generate

        real = len(encoded)
        encoded = encoded + [encoded[-1]] * (self.batch_size - real)  # fixed shapes: repeat the last row
        length = _round_up(max(len(ids) for ids, _ in encoded), self.length_multiple)
        input_ids = np.full((len(encoded), length), self.pad_id, np.int32)
        mask = np.zeros_like(input_ids)
        for row, (ids, _) in enumerate(encoded):
            input_ids[row, :len(ids)], mask[row, :len(ids)] = ids, 1
        pixels = np.concatenate([p for _, p in encoded]) if any(len(p) for _, p in encoded) else None
        eos = self.tokenizer.eos_token_id
        out = greedy_generate(self.model, input_ids, pixels, max_new_tokens=self.max_new_tokens,
                              eos_token_id=eos, attention_mask=mask, pad_token_id=self.pad_id)
        return [self._decode(row, eos) for row in out[:real]]

    def _decode(self, tokens: np.ndarray, eos) -> str:
        tokens = list(tokens)
        if eos is not None and eos in tokens:
            tokens = tokens[:tokens.index(eos)]
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()


class FixedAnswerer:
    """Replies from a table or a function of the request: tests, and answers produced elsewhere."""

    def __init__(self, reply):
        self.reply = reply if callable(reply) else (lambda request: reply)

    def answer(self, requests: Sequence[Request]) -> list[str]:
        return [self.reply(r) for r in requests]
