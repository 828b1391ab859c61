"""The offline world as a TFDS dataset: array_record files, no TensorFlow needed.

Writing an `Image` feature needs TensorFlow only to *encode* arrays; given
PNG bytes it stores them as they are, and `tfds.data_source` decodes them
with PIL. So the world is a normal TFDS dataset that any TFDS tool can read,
built and read here without TensorFlow.

Determinism: the examples (PNG bytes, text, scene JSON) are byte-identical
for the same `WorldSpec`. The array_record container is not: TFDS serializes
each example as a tf.train.Example whose feature map order varies between
runs, so compare decoded examples (or the LLaVA export), not record files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from comd_jax.data.synthetic import world
from comd_jax.data.tfds_source import TfdsSource


@dataclasses.dataclass(eq=False)
class SyntheticWorldConfig(tfds.core.BuilderConfig):
    spec: world.WorldSpec = world.WorldSpec()


def config_for(spec: world.WorldSpec) -> SyntheticWorldConfig:
    """A config named after the spec's content, so different worlds never collide on disk."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(spec), sort_keys=True).encode())
    name = f"px{spec.image_size}_seed{spec.seed}_{digest.hexdigest()[:10]}"
    return SyntheticWorldConfig(name=name, spec=spec, description=repr(spec))


class SyntheticWorld(tfds.core.GeneratorBasedBuilder):
    """Procedural shapes with captions and skill-tagged instructions."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [config_for(world.WorldSpec())]

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.spec.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "conversations": tfds.features.Sequence(
                        {
                            "from": tfds.features.Text(),
                            "value": tfds.features.Text(),
                        }
                    ),
                    "skill": tfds.features.Text(),
                    "answer": tfds.features.Text(),
                    "scene": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the world is generated.
        return {split: self._generate_examples(split) for split in world.SPLITS}

    def _generate_examples(self, split: str):
        for example in world.iterate_split(self.builder_config.spec, split):
            yield example.id, {
                "id": example.id,
                "image": example.png,  # bytes: stored as is, no TensorFlow encoder
                "conversations": {
                    "from": [t["from"] for t in example.conversations],
                    "value": [t["value"] for t in example.conversations],
                },
                "skill": example.skill,
                "answer": example.answer,
                "scene": example.scene,
            }


def build(spec: world.WorldSpec, data_dir: str) -> str:
    """Generates the world under data_dir (once) and returns the prepared folder."""
    config = config_for(spec)
    # TFDS refuses a custom config named like a registered one (the default world's).
    registered = {c.name for c in SyntheticWorld.BUILDER_CONFIGS}
    builder = SyntheticWorld(config=config.name if config.name in registered else config, data_dir=data_dir,
                             file_format="array_record")
    builder.download_and_prepare()
    return os.fspath(builder.data_dir)


def source(spec: world.WorldSpec, split: str, data_dir: str) -> TfdsSource:
    """A pipeline source over one split, building the world first if needed."""
    return TfdsSource.from_directory(build(spec, data_dir), split)


def decoded_examples(builder_dir: str, split: str):
    """Yields the stored examples as plain Python values (for checks and export)."""
    data = tfds.builder_from_directory(builder_dir).as_data_source(split=split)
    for i in range(len(data)):
        record = data[i]
        yield {
            "id": record["id"].decode(),
            "image": np.asarray(record["image"]),
            "conversations": [
                {"from": f.decode(), "value": v.decode()}
                for f, v in zip(record["conversations"]["from"], record["conversations"]["value"])
            ],
            "skill": record["skill"].decode(),
            "answer": record["answer"].decode(),
            "scene": record["scene"].decode(),
        }
