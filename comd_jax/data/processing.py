"""One raw example -> a trainable `Example` or a `Skipped` record saying why not.

The pipeline and the dataset checker both go through `ExampleProcessor`, so
what the checker passes is exactly what training will see.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from comd_jax.data import conversation, errors, images, tokenize
from comd_jax.data.records import RawExample
from comd_jax.data.templates import ChatTemplate, get_template


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    input_ids: np.ndarray  # int32 [T]
    loss_mask: np.ndarray  # bool [T]
    pixel_values: np.ndarray  # float32 [N, H, W, 3], N = images in this sample
    # The teacher's top-k at some target positions (distill.kd): (positions [n], ids [n, k], logp [n, k])
    kd: tuple | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])


class ExampleProcessor:
    """Validates, tokenizes and loads images for one example at a time (thread-safe)."""

    def __init__(
        self,
        *,
        template: str | ChatTemplate,
        tokenizer,
        image_config: images.ImageProcessorConfig,
        num_image_tokens: int,
        max_length: int,
        max_images: int = 1,
        teacher_scores=None,
    ):
        """`teacher_scores`: {sample id: distill.kd_scores.ScoredAnswer}, laid onto each sample's
        last answer (a sample scored as KD-only trains no cross-entropy)."""
        if num_image_tokens <= 0 or max_length <= 0 or max_images <= 0:
            raise ValueError("num_image_tokens, max_length and max_images must be positive")
        self.template = get_template(template)
        self.tokenizer = tokenizer
        self.image_config = image_config
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.max_images = max_images
        self.pad_id = _pad_id(tokenizer)
        self.teacher_scores = teacher_scores
        tokenize.image_token_id(tokenizer)  # Fail now, not per sample, if it is missing.

    def __call__(self, raw: RawExample) -> Example | errors.Skipped:
        try:
            return self._process(raw)
        except errors.SampleError as e:
            return errors.Skipped(raw.id, raw.origin, e.reason, e.detail)

    def tokenize(self, raw: RawExample) -> tokenize.TokenizedConversation:
        """Validation and tokenization only (no image decoding); raises SampleError."""
        if raw.error is not None:
            raise errors.SampleError(*raw.error)
        if len(raw.images) > self.max_images:
            raise errors.SampleError(
                errors.TOO_MANY_IMAGES, f"{len(raw.images)} images > max_images {self.max_images}"
            )
        parsed = conversation.parse_conversation(raw.conversations, num_images=len(raw.images))
        try:
            return tokenize.tokenize_conversation(
                parsed.messages,
                template=self.template,
                tokenizer=self.tokenizer,
                num_image_tokens=self.num_image_tokens,
                system=parsed.system,
                max_length=self.max_length,
            )
        except ValueError as e:  # e.g. more exchanges than the template takes
            raise errors.SampleError(errors.MALFORMED_SAMPLE, str(e)) from None

    def _process(self, raw: RawExample) -> Example:
        tokens = self.tokenize(raw)
        size = self.image_config.size
        pixels = np.zeros((len(raw.images), size, size, 3), np.float32)
        for i, image in enumerate(raw.images):
            pixels[i] = images.preprocess(images.load_image(image), self.image_config)
        loss_mask, kd = tokens.loss_mask, None
        if self.teacher_scores is not None:
            scored = self.teacher_scores.get(raw.id)
            if scored is not None:
                loss_mask, kd = self._lay(raw, tokens.loss_mask, scored)
        return Example(raw.id, tokens.input_ids, loss_mask, pixels, kd)

    def _lay(self, raw: RawExample, loss_mask: np.ndarray, scored):
        from comd_jax.distill.kd_scores import last_answer

        positions = last_answer(loss_mask)
        if len(positions) != len(scored.mask):
            raise errors.SampleError(errors.MALFORMED_SAMPLE, f"the teacher's scores cover {len(scored.mask)} "
                                     f"answer tokens, the sample has {len(positions)}: scores of another answer")
        keep = scored.mask
        kd = (positions[keep], scored.ids[keep], scored.logp[keep])
        return (loss_mask if scored.ce else np.zeros_like(loss_mask)), kd


def _pad_id(tokenizer) -> int:
    pad_id = tokenizer.pad_token_id
    if pad_id is None:  # Llama tokenizers ship without one; LLaVA pads with unk.
        pad_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
    return int(pad_id)
