"""Rendered conversation -> input ids + loss mask, checked token by token.

The whole conversation is tokenized once, with character offsets. A token is
trained when its characters lie inside an answer span (the answer plus its
end token, widened over the whitespace separating it from the role prefix,
which is where word-initial tokens such as "▁The" or "ĠThe" begin). A token
that straddles a span boundary means the text and the token boundaries
disagree (LLaVA #779/#1166); that sample is refused as a tokenization
mismatch instead of training with a shifted or empty mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from comd_jax.data import errors
from comd_jax.data.templates import IMAGE_PLACEHOLDER, ChatTemplate, Message, Segment


@dataclasses.dataclass(frozen=True)
class TokenizedConversation:
    input_ids: np.ndarray  # int32 [T], image placeholders expanded
    loss_mask: np.ndarray  # bool [T], True where input_ids[t] is a target
    text: str  # the rendered text, placeholders not expanded

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])


def image_token_id(tokenizer, image_token: str = IMAGE_PLACEHOLDER) -> int:
    """The id the model splices image features at; the tokenizer must know it."""
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(
            f"tokenizer has no {image_token!r} token; add it as a special token "
            "(tokenizer.add_special_tokens) and resize the model's embeddings"
        )
    return int(token_id)


def tokenize_conversation(
    messages: Sequence[Message],
    *,
    template: ChatTemplate,
    tokenizer,
    num_image_tokens: int,
    system: str | None = None,
    max_length: int | None = None,
) -> TokenizedConversation:
    """Tokenizes validated messages; raises errors.SampleError when unusable."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("a fast (Rust-backed) tokenizer is needed for offset mapping")
    segments = template.render(
        messages, bos=tokenizer.bos_token or "", eos=tokenizer.eos_token or "", system=system
    )
    text = "".join(s.text for s in segments)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoding["input_ids"], np.int32)
    offsets = np.asarray(encoding["offset_mapping"], np.int64).reshape(-1, 2)
    trained = _trained_tokens(text, _answer_spans(segments), offsets, tokenizer, ids)
    ids, trained = _expand_images(
        text, ids, offsets, trained, image_token_id(tokenizer), num_image_tokens
    )
    if max_length is not None and ids.shape[0] > max_length:
        raise errors.SampleError(
            errors.TOO_LONG, f"{ids.shape[0]} tokens > max_length {max_length}"
        )
    if not trained.any():
        raise errors.SampleError(errors.EMPTY_LABELS, "no token carries loss")
    return TokenizedConversation(ids, trained, text)


def _answer_spans(segments: Sequence[Segment]) -> list[tuple[int, int]]:
    spans, position = [], 0
    for segment in segments:
        end = position + len(segment.text)
        if segment.trained:
            spans.append((position, end))
        position = end
    return spans


def _trained_tokens(
    text: str, spans: list[tuple[int, int]], offsets: np.ndarray, tokenizer, ids: np.ndarray
) -> np.ndarray:
    trained = np.zeros(offsets.shape[0], bool)
    starts, ends = offsets[:, 0], offsets[:, 1]
    for number, (start, end) in enumerate(spans):
        widened = start
        while widened > 0 and text[widened - 1].isspace():
            widened -= 1
        # Tokens lying wholly in the separator whitespace stay untrained.
        touches_answer = np.where(
            ends > starts, (starts < end) & (ends > start), (starts >= start) & (starts < end)
        )
        inside = touches_answer & (starts >= widened) & (ends <= end)
        crossing = touches_answer & ~inside
        if crossing.any():
            t = int(np.argmax(crossing))
            raise errors.SampleError(
                errors.TOKENIZATION_MISMATCH,
                f"token {tokenizer.convert_ids_to_tokens(int(ids[t]))!r} at chars "
                f"{starts[t]}:{ends[t]} straddles answer {number} (chars {start}:{end}, "
                f"{text[start:end]!r})",
            )
        uncovered = _uncovered_chars(text, starts[inside], ends[inside], start, end)
        if uncovered:
            raise errors.SampleError(
                errors.TOKENIZATION_MISMATCH,
                f"answer {number} ({text[start:end]!r}) has characters no token of its own "
                f"covers: {uncovered!r}",
            )
        trained |= inside
    return trained


def _uncovered_chars(text: str, starts: np.ndarray, ends: np.ndarray, lo: int, hi: int) -> str:
    """Non-space characters of text[lo:hi] that none of the given tokens covers.

    Whitespace may legitimately fall between tokens (whitespace pre-tokenizers
    drop it); anything else missing means the tokens do not spell the answer.
    """
    covered = np.zeros(hi - lo, bool)
    for s, e in zip(starts, ends):
        covered[max(s, lo) - lo : max(e - lo, 0)] = True
    return "".join(c for c, ok in zip(text[lo:hi], covered) if not ok and not c.isspace())


def _expand_images(
    text: str,
    ids: np.ndarray,
    offsets: np.ndarray,
    trained: np.ndarray,
    image_id: int,
    num_image_tokens: int,
) -> tuple[np.ndarray, np.ndarray]:
    placeholders = text.count(IMAGE_PLACEHOLDER)
    is_image = ids == image_id
    exact = is_image & (offsets[:, 1] - offsets[:, 0] == len(IMAGE_PLACEHOLDER))
    if int(exact.sum()) != placeholders or int(is_image.sum()) != placeholders:
        raise errors.SampleError(
            errors.TOKENIZATION_MISMATCH,
            f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) became "
            f"{int(is_image.sum())} image token(s)",
        )
    if placeholders == 0:
        return ids, trained
    repeats = np.where(is_image, num_image_tokens, 1)
    return np.repeat(ids, repeats), np.repeat(trained, repeats)
