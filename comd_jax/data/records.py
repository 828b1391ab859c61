"""The raw example every source yields, before validation and tokenization."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from comd_jax.data.images import ImageInput


@dataclasses.dataclass(frozen=True)
class RawExample:
    id: str
    origin: str  # where it came from, for error messages: "file.jsonl:17", "tfds:name/split[3]"
    conversations: object  # turns as found; conversation.parse_conversation validates them
    images: tuple[ImageInput, ...] = ()
    # A problem found while reading (reason, detail), e.g. a malformed JSON line:
    # the sample still occupies its index so skips stay countable and positions stable.
    error: tuple[str, str] | None = None


class Source(Protocol):
    """Random access over raw examples; what grain's MapDataset.source wants."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> RawExample: ...
