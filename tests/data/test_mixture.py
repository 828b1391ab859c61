"""`data="a[:n]+b"`: slices and concatenations of sources, through the stage pipeline."""
from __future__ import annotations

import ml_collections
import pytest
from conftest import make_word_tokenizer
from test_input_pipeline import ListSource, sample_ids

from comd_jax import stages
from comd_jax.data import images, mixture


class Shifted:
    """ListSource's samples from `offset` on: another 'split' with disjoint ids."""

    def __init__(self, offset, n):
        self.inner, self.offset, self.n = ListSource(), offset, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.inner[self.offset + i]


SPLITS = {"a": lambda: Shifted(0, 10), "b": lambda: Shifted(20, 6)}


def ids(source):
    return [source[i].id for i in range(len(source))]


def test_concat_and_slices_index_like_python_lists():
    src = mixture.resolve("a[:3]+b+a[-2:]", lambda name: SPLITS[name]())
    expected = [f"s{i}" for i in (0, 1, 2, 20, 21, 22, 23, 24, 25, 8, 9)]
    assert ids(src) == expected
    assert ids(mixture.resolve("b[2:4]", lambda name: SPLITS[name]())) == ["s22", "s23"]
    with pytest.raises(IndexError):
        src[len(expected)]
    # A single unsliced name is the source itself, untouched.
    single = SPLITS["a"]()
    assert mixture.resolve("a", lambda name: single) is single


@pytest.mark.parametrize("spec, message", [("a[5:2]", "selects no examples"), ("a++b", "empty name")])
def test_bad_specs_name_the_spec(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        mixture.resolve(spec, lambda name: SPLITS[name]())
    assert repr(spec) in str(err.value)


def test_unknown_name_reaches_the_opener():
    def opener(name):
        raise FileNotFoundError(f"data file not found: {name!r}")
    with pytest.raises(FileNotFoundError, match="'c'"):
        mixture.resolve("a+c[:2]", lambda name: SPLITS[name]() if name in SPLITS else opener(name))


def test_stage_pipeline_trains_on_exactly_the_mixture():
    data = stages.StageData("unused", images.ImageProcessorConfig(size=6), lambda name, folder: SPLITS[name]())
    section = ml_collections.ConfigDict(dict(
        data="a[:4]+b[3:]", image_folder="", template="plain", global_batch=4, length_buckets=(9, 11, 13, 15),
        max_images=1, strict_data=False))
    seen = set()
    with stages.train_pipeline(data, section, make_word_tokenizer(), num_image_tokens=5, seed=3) as pipe:
        for _ in range(12):  # several epochs of 7 samples
            seen.update(sample_ids(next(pipe)))
    assert seen == {0, 1, 2, 3, 23, 24, 25}


def test_held_out_batches_read_the_same_syntax():
    data = stages.StageData("unused", images.ImageProcessorConfig(size=6), lambda name, folder: SPLITS[name]())
    section = ml_collections.ConfigDict(dict(
        eval_data="b[1:3]+a[:1]", image_folder="", template="plain", global_batch=4, length_buckets=(9, 11, 13, 15),
        max_images=1, eval_batches=5))
    make = stages.eval_batches(data, section, make_word_tokenizer(), num_image_tokens=5)
    seen = [i for batch in make() for i in sample_ids(batch)]
    assert sorted(seen) == [0, 21, 22]  # one pass, unshuffled set, nothing else
