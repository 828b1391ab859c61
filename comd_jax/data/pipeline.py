"""The input pipeline: any source -> per-host batches -> global jax arrays.

Built on grain (see README.md here for why):

  source ─ shuffle(seed; reshuffled each epoch) ─ repeat ─ [host::hosts]
         ─ map(ExampleProcessor) in threads ─ drop+count skips ─ bucketed batch
         ─ background prefetch

Every host walks the same global shuffled stream and keeps every
`process_count`-th element, so hosts read disjoint shares. The iterator
position (`get_state`) counts source positions consumed by the batches
already handed out, so a restored run continues at the next unseen example
even though prefetching ran ahead.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import grain
import jax
import numpy as np
from absl import logging

from comd_jax.data import batching, errors
from comd_jax.data.images import ImageProcessorConfig
from comd_jax.data.processing import Example, ExampleProcessor
from comd_jax.data.records import Source
from comd_jax.data.templates import ChatTemplate

_STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    batch_size: int  # per host
    length_buckets: tuple[int, ...] = (256, 512, 1024, 2048)
    max_images: int = 1
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None  # None: repeat forever (training)
    strict: bool = False  # True: the first bad sample raises errors.DataError
    # False: a final partial batch is padded with empty rows (attention_mask 0).
    drop_remainder: bool = True
    num_threads: int = 2  # threads decoding images/tokenizing; both release the GIL
    read_buffer: int = 64  # examples processed ahead
    prefetch_batches: int = 2  # batches assembled ahead in a background thread
    kd_k: int = 0  # > 0: batches carry the teacher's top-k scores (the processor's teacher_scores)

    def __post_init__(self):
        if self.batch_size <= 0 or self.num_threads <= 0 or self.prefetch_batches < 0:
            raise ValueError(f"bad pipeline config: {self}")
        if self.num_epochs is not None and self.num_epochs <= 0:
            raise ValueError("num_epochs must be positive or None")
        if not 0 <= self.seed < 2**32:
            raise ValueError("seed must fit in 32 bits (grain's index shuffle)")
        object.__setattr__(self, "length_buckets", tuple(self.length_buckets))


class InputPipeline:
    """An iterator of host-local numpy batches with a saveable position."""

    def __init__(
        self,
        source: Source,
        processor: ExampleProcessor,
        config: PipelineConfig,
        *,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        if processor.max_length > config.length_buckets[-1]:
            raise ValueError(
                f"max_length {processor.max_length} exceeds the largest length "
                f"bucket {config.length_buckets[-1]}"
            )
        if processor.max_images > config.max_images:
            raise ValueError("the processor admits more images than the batch has slots for")
        self.config = config
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        self.pad_id = processor.pad_id
        self.skip_log = errors.SkipLog()
        self._skipped_in_a_row = 0
        self._num_examples = len(source)
        self._shape = batching.BatchShape(
            config.batch_size,
            config.length_buckets,
            config.max_images,
            processor.image_config.size,
            processor.pad_id,
            config.kd_k,
        )
        self._iterator = iter(self._dataset(source, processor))
        self._finished = False

    def _dataset(self, source: Source, processor: ExampleProcessor) -> grain.IterDataset:
        config = self.config
        ds = grain.MapDataset.source(source)
        if config.shuffle:
            ds = ds.shuffle(seed=config.seed)  # grain reseeds with seed + epoch on each pass
        ds = ds.repeat(config.num_epochs)
        ds = ds[self.process_index :: self.process_count]
        ds = ds.map(processor)
        it = ds.to_iter_dataset(
            grain.ReadOptions(
                num_threads=config.num_threads, prefetch_buffer_size=config.read_buffer
            )
        )
        it = it.filter(self._keep)
        it = it.batch(
            config.batch_size,
            drop_remainder=config.drop_remainder,
            batch_fn=functools.partial(batching.make_batch, shape=self._shape),
        )
        if config.prefetch_batches:
            it = grain.experimental.ThreadPrefetchIterDataset(
                it, prefetch_buffer_size=config.prefetch_batches
            )
        return it

    def _keep(self, item: Example | errors.Skipped) -> bool:
        if isinstance(item, Example):
            self._skipped_in_a_row = 0
            return True
        if self.config.strict:
            raise errors.DataError(item.describe())
        if self.skip_log.record(item):
            logging.warning("skipping %s", item.describe())
        # Repeating forever (training), a whole pass over this host's share without one
        # usable sample would spin without end: stop and say why. A finite pass (a lint,
        # an evaluation) just ends, its skips counted.
        self._skipped_in_a_row += 1
        if self.config.num_epochs is None and \
                self._skipped_in_a_row >= max(self._num_examples // self.process_count, 1):
            raise errors.DataError(
                f"every sample was skipped in a full pass over {self._num_examples} examples; "
                f"by reason: {dict(self.skip_log.counts)}")
        return False

    def __iter__(self) -> "InputPipeline":
        return self

    def __next__(self) -> batching.Batch:
        try:
            return next(self._iterator)
        except StopIteration:
            if not self._finished:
                self._finished = True
                logging.info("input pipeline exhausted; %s", self.skip_log.summary())
            raise

    def get_state(self) -> dict:
        """A small JSON-able position; store it with the checkpoint."""
        return {
            "version": _STATE_VERSION,
            "iterator": self._iterator.get_state(),
            "layout": self._layout(),
            "skipped": self.skip_log.counts,
        }

    def set_state(self, state: Mapping) -> None:
        """Continues from a position saved by get_state of an identical pipeline."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown input pipeline state version {state.get('version')}")
        if dict(state["layout"]) != self._layout():
            raise ValueError(
                "the saved input position belongs to a differently laid out "
                f"pipeline: saved {state['layout']}, now {self._layout()}"
            )
        self._iterator.set_state(state["iterator"])
        self.skip_log.restore_counts(state.get("skipped", {}))
        self._finished = False

    def _layout(self) -> dict:
        # What the saved position's meaning depends on; batch size and buckets do
        # not matter because the position counts source examples, not batches.
        return {
            "seed": self.config.seed,
            "shuffle": self.config.shuffle,
            "num_epochs": self.config.num_epochs,
            "num_examples": self._num_examples,
            "process_index": self.process_index,
            "process_count": self.process_count,
        }

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()
        logging.info("input pipeline closed; %s", self.skip_log.summary())

    def __enter__(self) -> "InputPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def to_global(self, batch: batching.Batch, sharding) -> dict[str, jax.Array]:
        return make_global_batch(batch, sharding, pad_id=self.pad_id)


def make_pipeline(
    source: Source,
    *,
    template: str | ChatTemplate,
    tokenizer,
    image_config: ImageProcessorConfig,
    num_image_tokens: int,
    config: PipelineConfig,
    process_index: int | None = None,
    process_count: int | None = None,
    teacher_scores=None,
) -> InputPipeline:
    """The usual construction: the longest bucket is the maximum sample length."""
    processor = ExampleProcessor(
        teacher_scores=teacher_scores,
        template=template,
        tokenizer=tokenizer,
        image_config=image_config,
        num_image_tokens=num_image_tokens,
        max_length=config.length_buckets[-1],
        max_images=config.max_images,
    )
    return InputPipeline(
        source, processor, config, process_index=process_index, process_count=process_count
    )


def make_global_batch(batch: batching.Batch, sharding, *, pad_id: int) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global jax arrays, leading axis split over hosts.

    `sharding` is one jax.sharding.Sharding for every array (it must split the
    batch axis) or a mapping from batch key to Sharding. Hosts may have picked
    different length buckets for the same step; they agree on the longest
    first, so every host contributes the same shape.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        lengths = multihost_utils.process_allgather(np.int32(batch["input_ids"].shape[1]))
        batch = batching.pad_to_length(batch, int(np.max(lengths)), pad_id)
    shardings = sharding if isinstance(sharding, Mapping) else {k: sharding for k in batch}
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}
