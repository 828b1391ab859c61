"""Every offline preset's length buckets hold what its stages train on.

An example longer than a stage's last bucket is skipped (and counted) by the
pipeline, so a preset whose image-token count grows without its buckets would
quietly train on a fraction of its data. The ablation preset runs 4 px patches
(64 image tokens) against the default's 16, which is the change this guards.
"""
import dataclasses

import pytest

from comd_jax import config as config_lib
from comd_jax import stages
from comd_jax.data import errors, images
from comd_jax.data.processing import ExampleProcessor
from comd_jax.data.records import RawExample
from comd_jax.data.synthetic import tokenizer as world_tokenizer
from comd_jax.data.synthetic import world

# Enough scenes that every skill and the longest question forms occur (about 40 per skill).
NUM_CAPTIONS, NUM_INSTRUCTIONS = 120, 360


@pytest.fixture(scope="module")
def world_tokenizers(tmp_path_factory):
    """One tokenizer per world vocabulary size, trained as the run trains it (on a smaller world)."""
    from transformers import AutoTokenizer

    cache = {}

    def get(data_config):
        key = data_config.vocab_size
        if key not in cache:
            spec = _small_spec(data_config)
            out = str(tmp_path_factory.mktemp(f"tok{key}"))
            world_tokenizer.build_world_tokenizer(spec, out, vocab_size=key)
            cache[key] = AutoTokenizer.from_pretrained(out)
        return cache[key]

    return get


def _small_spec(data_config):
    return dataclasses.replace(stages.world_spec(data_config), num_captions=NUM_CAPTIONS,
                               num_instructions=NUM_INSTRUCTIONS, num_heldout=8)


def _training_sections(config):
    """(stage name, model section) for every stage that trains on the world's data."""
    names = list(config.stages) + list(config.get("teacher_stages", ())) + ["round_tune"]
    return [(n, config.teacher if n.startswith("teacher") else config.model) for n in names]


@pytest.mark.parametrize("preset", ["default", "smoke", "ablation"])
def test_every_stage_bucket_holds_the_world_examples_it_trains_on(preset, world_tokenizers):
    config = config_lib.preset(preset)
    spec = _small_spec(config.data)
    tokenizer = world_tokenizers(config.data)
    examples = {split: [world.generate_example(spec, split, i) for i in range(spec.split_size(split))]
                for split in (world.CAPTIONS, world.INSTRUCTIONS)}
    checked = []
    for name, model_section in _training_sections(config):
        section = config[name]
        split = world.CAPTIONS if section.data.startswith("captions") else world.INSTRUCTIONS
        image_tokens = config_lib.model_config(model_section).num_image_tokens
        processor = ExampleProcessor(template=section.template, tokenizer=tokenizer,
                                     image_config=images.ImageProcessorConfig(size=spec.image_size),
                                     num_image_tokens=image_tokens, max_length=section.length_buckets[-1])
        too_long = []
        for ex in examples[split]:
            raw = RawExample(ex.id, f"{preset}:{split}", list(ex.conversations), (ex.image,))
            try:
                processor.tokenize(raw)
            except errors.SampleError as e:
                assert e.reason == errors.TOO_LONG, (name, ex.id, e)
                too_long.append(ex.id)
        assert not too_long, (f"{preset}.{name}: {len(too_long)} of {len(examples[split])} {split} examples exceed "
                              f"the last bucket {section.length_buckets[-1]} with {image_tokens} image tokens")
        checked.append(name)
    assert {"tune", "round_tune"} <= set(checked)
