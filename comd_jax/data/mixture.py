"""Several sources read as one: `data="instructions+captions"` trains on both,
and a slice of one: `data="instructions[:256]"` (TFDS's split-slicing syntax).

LLaVA-style instruction mixes keep caption data next to the questions, and a
pool-sized warm-up wants the first N instructions only. The pipeline shuffles
globally, so concatenation is the whole mixing rule (a source twice is weight
two). A name that itself contains "+" cannot be given here.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence

from comd_jax.data.records import RawExample, Source

SEPARATOR = "+"
_SLICED = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


class ConcatSource:
    """Random access over the sources one after another."""

    def __init__(self, sources: Sequence[Source]):
        if not sources:
            raise ValueError("ConcatSource needs at least one source")
        self._sources = list(sources)
        self._ends = []
        total = 0
        for source in self._sources:
            total += len(source)
            self._ends.append(total)

    def __len__(self) -> int:
        return self._ends[-1]

    def __getitem__(self, index: int) -> RawExample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        part = bisect.bisect_right(self._ends, index)
        start = self._ends[part - 1] if part else 0
        return self._sources[part][index - start]


class SliceSource:
    """Examples [start, stop) of a source, indexed from 0 (Python slice rules, step 1)."""

    def __init__(self, source: Source, start: int | None, stop: int | None, *, label: str):
        self._source = source
        self._range = range(len(source))[slice(start, stop)]
        if not self._range:
            raise ValueError(f"data={label!r} selects no examples (the source has {len(source)})")

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index: int) -> RawExample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        return self._source[self._range[index]]


def resolve(spec: str, open_one: Callable[[str], Source]) -> Source:
    """`"a+b[:100]+a"` -> a, the first 100 of b, a again, concatenated; `"a"` -> that source itself."""
    names = [name.strip() for name in spec.split(SEPARATOR)]
    if any(not name for name in names):
        raise ValueError(f"data={spec!r}: empty name between {SEPARATOR!r} separators")
    parts = [_open(name, open_one) for name in names]
    return parts[0] if len(parts) == 1 else ConcatSource(parts)


def _open(name: str, open_one: Callable[[str], Source]) -> Source:
    sliced = _SLICED.match(name)
    if sliced is None:
        return open_one(name)
    bound = lambda text: int(text) if text else None  # noqa: E731
    return SliceSource(open_one(sliced["name"].strip()), bound(sliced["start"]), bound(sliced["stop"]), label=name)
