"""Any TFDS dataset with image + conversation features, read without TensorFlow.

`tfds.data_source` gives random access over array_record files and decodes
features with NumPy/PIL, so TensorFlow need not be installed. Conversations
may be stored as a `Sequence({"from", "value"})` feature (read back as a
dict of lists), a list of dicts, or a JSON string. Images may be an `Image`
feature (decoded to uint8), a uint8 `Tensor` ([H, W, 3] or [N, H, W, 3] for
several), or encoded bytes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

import numpy as np

from comd_jax.data import errors
from comd_jax.data.records import RawExample


@dataclasses.dataclass(frozen=True)
class TfdsFields:
    """Which features hold what; a missing image feature means text-only."""

    image: str = "image"
    conversations: str = "conversations"
    id: str = "id"


class TfdsSource:
    """Wraps a TFDS data source (anything with __len__/__getitem__ of feature dicts)."""

    def __init__(self, data_source, *, name: str, fields: TfdsFields = TfdsFields()):
        self._data_source = data_source
        self._name = name
        self._fields = fields

    @classmethod
    def from_name(
        cls,
        name: str,
        split: str,
        *,
        data_dir: str | None = None,
        fields: TfdsFields = TfdsFields(),
    ) -> "TfdsSource":
        """A prepared dataset by registered name, e.g. "my_dataset/config:1.0.0"."""
        import tensorflow_datasets as tfds  # Heavy; only sources that need it import it.

        return cls(
            tfds.data_source(name, split=split, data_dir=data_dir),
            name=f"tfds:{name}/{split}",
            fields=fields,
        )

    @classmethod
    def from_directory(
        cls, builder_dir: str, split: str, *, fields: TfdsFields = TfdsFields()
    ) -> "TfdsSource":
        """A prepared dataset by its folder (no builder code or registration needed)."""
        import tensorflow_datasets as tfds

        builder = tfds.builder_from_directory(builder_dir)
        return cls(
            builder.as_data_source(split=split), name=f"tfds:{builder.name}/{split}", fields=fields
        )

    def __len__(self) -> int:
        return len(self._data_source)

    def __getitem__(self, index: int) -> RawExample:
        origin = f"{self._name}[{index}]"
        try:
            record = self._data_source[index]
        except Exception as e:  # A corrupt record or an undecodable image feature.
            return RawExample(
                str(index),
                origin,
                None,
                error=(
                    (
                        errors.UNREADABLE_IMAGE
                        if "image" in str(e).lower()
                        else errors.MALFORMED_SAMPLE
                    ),
                    str(e),
                ),
            )
        sample_id = _text(record.get(self._fields.id, str(index)))
        try:
            conversations = _turns(record.get(self._fields.conversations))
        except (ValueError, TypeError) as e:
            return RawExample(sample_id, origin, None, error=(errors.MALFORMED_SAMPLE, str(e)))
        return RawExample(sample_id, origin, conversations, _images(record.get(self._fields.image)))


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _turns(value) -> list[dict]:
    if value is None:
        raise ValueError("no conversations feature")
    if isinstance(value, (bytes, str)):
        value = json.loads(_text(value))
    if isinstance(value, Mapping):  # Sequence({...}) decodes to a dict of lists.
        keys = list(value)
        columns = [list(value[k]) for k in keys]
        if len({len(c) for c in columns}) > 1:
            raise ValueError("conversation columns differ in length")
        return [{k: _text(v) for k, v in zip(keys, row)} for row in zip(*columns)]
    return [{k: _text(v) for k, v in turn.items()} for turn in value]


def _images(value) -> tuple:
    if value is None:
        return ()
    if isinstance(value, bytes):
        return (value,) if value else ()
    array = np.asarray(value)
    if array.dtype == object:  # A sequence of encoded images.
        return tuple(bytes(v) for v in array.reshape(-1) if len(v))
    if array.ndim == 4:
        return tuple(array)
    return (array,)
