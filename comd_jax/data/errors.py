"""Why a sample is skipped, and the bookkeeping that keeps skips visible.

Every reason a sample can be refused has a name here. Lenient runs count and
log them (`SkipLog`); strict runs raise `DataError` with the place and reason.
"""

from __future__ import annotations

import collections
import dataclasses
import threading

MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
MALFORMED_JSON = "malformed_json"
MALFORMED_SAMPLE = "malformed_sample"
UNKNOWN_ROLE = "unknown_role"
ROLES_NOT_ALTERNATING = "roles_not_alternating"
NO_ASSISTANT_TURN = "no_assistant_turn"
TOO_MANY_PLACEHOLDERS = "too_many_placeholders"
MISSING_PLACEHOLDER = "missing_placeholder"
TOO_MANY_IMAGES = "too_many_images"
TOO_LONG = "too_long"
EMPTY_LABELS = "empty_labels"
TOKENIZATION_MISMATCH = "tokenization_mismatch"

ALL_REASONS = (
    MISSING_IMAGE,
    UNREADABLE_IMAGE,
    MALFORMED_JSON,
    MALFORMED_SAMPLE,
    UNKNOWN_ROLE,
    ROLES_NOT_ALTERNATING,
    NO_ASSISTANT_TURN,
    TOO_MANY_PLACEHOLDERS,
    MISSING_PLACEHOLDER,
    TOO_MANY_IMAGES,
    TOO_LONG,
    EMPTY_LABELS,
    TOKENIZATION_MISMATCH,
)


class SampleError(Exception):
    """A sample cannot be trained on; `reason` is one of ALL_REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in ALL_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DataError(Exception):
    """Strict mode: a bad sample stops the run, naming where it is."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """The record a refused sample leaves behind instead of vanishing."""

    id: str
    origin: str  # file:line, file[index] or tfds split[index]
    reason: str
    detail: str

    def describe(self) -> str:
        return f"{self.origin} (id={self.id}): {self.reason}: {self.detail}"


class SkipLog:
    """Counts skipped samples per reason, keeping a few example ids of each.

    Thread-safe: the input pipeline records skips from its prefetch thread.
    """

    def __init__(self, examples_per_reason: int = 5):
        self._examples_per_reason = examples_per_reason
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._examples: dict[str, list[str]] = collections.defaultdict(list)

    def record(self, skipped: Skipped) -> bool:
        """Counts one skip; True when it is among the first few of its reason."""
        with self._lock:
            self._counts[skipped.reason] += 1
            examples = self._examples[skipped.reason]
            if len(examples) < self._examples_per_reason:
                examples.append(skipped.id)
                return True
            return False

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def example_ids(self, reason: str) -> list[str]:
        with self._lock:
            return list(self._examples.get(reason, ()))

    def restore_counts(self, counts: dict[str, int]) -> None:
        with self._lock:
            self._counts = collections.Counter(counts)

    def summary(self) -> str:
        with self._lock:
            if not self._counts:
                return "skipped: 0"
            lines = [f"skipped: {sum(self._counts.values())}"]
            for reason, count in sorted(self._counts.items()):
                ids = ", ".join(self._examples.get(reason, ()))
                lines.append(f"  {reason}: {count} (e.g. {ids})")
            return "\n".join(lines)
