"""Read safetensors checkpoints tensor by tensor; write them in shards."""
from __future__ import annotations

import contextlib
import glob
import json
import os

import numpy as np
from safetensors import safe_open

INDEX = "model.safetensors.index.json"


class CheckpointReader:
    """Maps every tensor name of a transformers directory to its file; reads one
    tensor at a time (memory-mapped), whether bf16, fp16 or fp32."""

    def __init__(self, directory: str):
        self.directory = directory
        index = os.path.join(directory, INDEX)
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            self.files = {k: os.path.join(directory, v) for k, v in weight_map.items()}
        else:
            paths = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
            if not paths:
                raise FileNotFoundError(f"{directory}: no *.safetensors files (and no {INDEX})")
            self.files = {}
            for path in paths:
                with safe_open(path, "numpy") as f:
                    self.files.update({k: path for k in f.keys()})
        self._stack = contextlib.ExitStack()
        self._open: dict = {}

    def keys(self):
        return self.files.keys()

    def _handle(self, key: str):
        path = self.files[key]
        if path not in self._open:
            # The flax framework reads bfloat16, which numpy's safetensors reader cannot.
            self._open[path] = self._stack.enter_context(safe_open(path, "flax"))
        return self._open[path]

    def shape(self, key: str) -> tuple:
        return tuple(self._handle(key).get_slice(key).get_shape())

    def read(self, key: str) -> np.ndarray:
        return np.asarray(self._handle(key).get_tensor(key))

    def close(self):
        self._stack.close()
        self._open.clear()

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
