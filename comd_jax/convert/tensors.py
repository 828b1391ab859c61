"""Read safetensors checkpoints tensor by tensor; write them in shards."""
from __future__ import annotations

import glob
import json
import os
import struct

import ml_dtypes
import numpy as np

INDEX = "model.safetensors.index.json"


# safetensors dtype names → numpy dtypes (ml_dtypes, a jax dependency, adds bf16 and fp8).
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_header(path: str) -> tuple:
    """(tensor entries, byte offset of the data section) of one safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


class CheckpointReader:
    """Maps every tensor name of a transformers directory to its file; reads one
    tensor at a time, whether bf16, fp16 or fp32.

    Tensors are read with plain file reads into a fresh buffer rather than
    memory-mapped: a mapping keeps every page it touched resident in this
    process until the file is closed, which would add the whole checkpoint to
    the loader's peak memory on top of the parameters it builds."""

    def __init__(self, directory: str):
        self.directory = directory
        index = os.path.join(directory, INDEX)
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            paths = sorted(set(os.path.join(directory, v) for v in weight_map.values()))
        else:
            paths = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
            if not paths:
                raise FileNotFoundError(f"{directory}: no *.safetensors files (and no {INDEX})")
        self.files, self._entries = {}, {}
        for path in paths:
            header, data_start = read_header(path)
            for key, entry in header.items():
                self.files[key] = path
                self._entries[key] = (entry, data_start)

    def keys(self):
        return self.files.keys()

    def shape(self, key: str) -> tuple:
        return tuple(self._entries[key][0]["shape"])

    def read(self, key: str) -> np.ndarray:
        entry, data_start = self._entries[key]
        if entry["dtype"] not in _DTYPES:
            raise ValueError(f"{self.files[key]}: tensor {key!r} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        out = np.empty(entry["shape"], _DTYPES[entry["dtype"]])
        if out.nbytes != end - begin:
            raise ValueError(f"{self.files[key]}: tensor {key!r} holds {end - begin} bytes, "
                             f"its shape and dtype need {out.nbytes}")
        with open(self.files[key], "rb") as f:
            f.seek(data_start + begin)
            if f.readinto(out.reshape(-1).view(np.uint8)) != out.nbytes:
                raise ValueError(f"{self.files[key]}: truncated data for tensor {key!r}")
        return out

    def close(self):
        pass  # nothing stays open between reads

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ShardedWriter:
    """Writes tensors into files of at most `max_shard_bytes`, plus the index
    transformers reads; only the current shard is held in memory."""

    def __init__(self, directory: str, max_shard_bytes: int = 5 * 2**30):
        self.directory = directory
        self.max_shard_bytes = max_shard_bytes
        self.pending: dict = {}
        self.pending_bytes = 0
        self.shards: list = []  # list of key lists

    def add(self, key: str, array: np.ndarray):
        if self.pending and self.pending_bytes + array.nbytes > self.max_shard_bytes:
            self._flush()
        self.pending[key] = np.ascontiguousarray(array)
        self.pending_bytes += array.nbytes

    def _flush(self):
        from safetensors.flax import save_file  # handles bfloat16
        import jax.numpy as jnp

        name = f"model-{len(self.shards) + 1:05d}.safetensors"
        save_file({k: jnp.asarray(v) for k, v in self.pending.items()},
                  os.path.join(self.directory, name), metadata={"format": "pt"})
        self.shards.append((name, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self, total_bytes: int):
        if self.pending or not self.shards:
            self._flush()
        if len(self.shards) == 1:
            name, _ = self.shards[0]
            os.replace(os.path.join(self.directory, name), os.path.join(self.directory, "model.safetensors"))
            return
        total = len(self.shards)
        weight_map = {}
        for n, (name, keys) in enumerate(self.shards, 1):
            final = f"model-{n:05d}-of-{total:05d}.safetensors"
            os.replace(os.path.join(self.directory, name), os.path.join(self.directory, final))
            weight_map.update({k: final for k in keys})
        with open(os.path.join(self.directory, INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, f, indent=2)
