"""LLaVA-format JSON (a list) and JSON Lines (one object a line) as a source.

Image paths are relative to `image_folder` (default: the data file's
folder). `image` may be a string, a list of strings (several images), or
absent (a text-only sample). A JSON Lines file with a bad line stays usable:
the line becomes an example carrying a `malformed_json` error.
"""

from __future__ import annotations

import json
import os

from comd_jax.data import errors
from comd_jax.data.records import RawExample


class LlavaJsonSource:
    """Random access over a LLaVA JSON/JSONL file."""

    def __init__(self, path: str, image_folder: str | None = None):
        self.path = path
        self.image_folder = image_folder if image_folder is not None else os.path.dirname(path)
        self._name = os.path.basename(path)
        if _is_json_lines(path):
            # Lines are parsed lazily, in the pipeline's worker threads.
            with open(path, encoding="utf-8") as f:
                self._lines = [(n, line) for n, line in enumerate(f, start=1) if line.strip()]
            self._items = None
        else:
            with open(path, encoding="utf-8") as f:
                try:
                    items = json.load(f)
                except json.JSONDecodeError as e:
                    # One broken JSON document spoils every sample in it: always fatal.
                    raise errors.DataError(f"{path}: not valid JSON: {e}") from None
            if not isinstance(items, list):
                raise errors.DataError(f"{path}: expected a JSON list of samples")
            self._items, self._lines = items, None

    def __len__(self) -> int:
        return len(self._items if self._items is not None else self._lines)

    def __getitem__(self, index: int) -> RawExample:
        if self._items is not None:
            return self._from_item(self._items[index], f"{self._name}[{index}]", str(index))
        line_number, line = self._lines[index]
        origin = f"{self._name}:{line_number}"
        try:
            item = json.loads(line.strip())
        except json.JSONDecodeError as e:
            return RawExample(
                f"line{line_number}", origin, None, error=(errors.MALFORMED_JSON, str(e))
            )
        return self._from_item(item, origin, f"line{line_number}")

    def _from_item(self, item: object, origin: str, fallback_id: str) -> RawExample:
        if not isinstance(item, dict):
            return RawExample(
                fallback_id,
                origin,
                None,
                error=(errors.MALFORMED_SAMPLE, "a sample must be a JSON object"),
            )
        sample_id = str(item.get("id", fallback_id))
        image = item.get("image")
        paths = [] if image is None else [image] if isinstance(image, str) else image
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            return RawExample(
                sample_id,
                origin,
                None,
                error=(errors.MALFORMED_SAMPLE, "'image' must be a path or a list"),
            )
        if "conversations" not in item:
            return RawExample(
                sample_id, origin, None, error=(errors.MALFORMED_SAMPLE, "no 'conversations'")
            )
        images = tuple(os.path.join(self.image_folder, p) for p in paths)
        return RawExample(sample_id, origin, item["conversations"], images)


def _is_json_lines(path: str) -> bool:
    if path.endswith((".jsonl", ".jsonlines")):
        return True
    if path.endswith(".json"):
        return False
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    return not head.startswith("[")
