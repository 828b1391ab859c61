"""Host sharding, seeded order, length buckets, resume, and global arrays."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import make_word_tokenizer, word_vocab

from comd_jax.data import images, pipeline
from comd_jax.data.records import RawExample

VOCAB = word_vocab()
N = 40


class ListSource:
    """Sample i answers "w{i}" repeated 1 + i % 7 times, so lengths vary."""

    def __init__(self, n=N, bad=()):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        answer = " ".join([f"w{i}"] * (1 + i % 7))
        turns = [
            {"from": "human", "value": "<image>\nHow many ?"},
            {"from": "gpt", "value": answer},
        ]
        if i in self.bad:
            turns = turns[:1]  # no assistant turn
        image = np.full((6, 6, 3), i, np.uint8)
        return RawExample(f"s{i}", f"list[{i}]", turns, (image,))


def build(source=None, *, process_index=0, process_count=1, **overrides):
    settings = dict(batch_size=4, length_buckets=(9, 11, 13, 15), seed=7, num_threads=2)
    settings.update(overrides)
    return pipeline.make_pipeline(
        source or ListSource(),
        template="plain",
        tokenizer=make_word_tokenizer(),
        image_config=images.ImageProcessorConfig(size=6),
        num_image_tokens=5,
        config=pipeline.PipelineConfig(**settings),
        process_index=process_index,
        process_count=process_count,
    )


def sample_ids(batch) -> list[int]:
    """Which source samples a batch holds, read from the trained tokens."""
    out = []
    for row in range(batch["input_ids"].shape[0]):
        trained = batch["input_ids"][row][batch["loss_mask"][row] > 0]
        if trained.size:
            out.append(int([w for w, i in VOCAB.items() if i == trained[0]][0][1:]))
    return out


def take(p, batches):
    return [next(p) for _ in range(batches)]


def test_batch_contract():
    with build() as p:
        batch = next(p)
    assert set(batch) == {"input_ids", "attention_mask", "loss_mask", "pixel_values", "image_mask"}
    b, t = batch["input_ids"].shape
    assert b == 4 and batch["input_ids"].dtype == np.int32
    assert batch["attention_mask"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32
    assert batch["pixel_values"].shape == (4, 1, 6, 6, 3) and batch["image_mask"].all()
    for row in range(b):
        n = int(batch["attention_mask"][row].sum())
        assert (batch["attention_mask"][row, :n] == 1).all()
        assert (batch["input_ids"][row, n:] == VOCAB["<pad>"]).all()
        assert (batch["loss_mask"][row, n:] == 0).all()
        # plain: <s>, 5 image tokens, then caption + </s> trained.
        assert batch["input_ids"][row, 0] == VOCAB["<s>"]
        assert (batch["input_ids"][row, 1:6] == VOCAB["<image>"]).all()
        assert (batch["loss_mask"][row, :6] == 0).all() and (
            batch["loss_mask"][row, 6:n] == 1
        ).all()
        assert batch["input_ids"][row, n - 1] == VOCAB["</s>"]
        # Images are normalized: the sample's grey level i maps back.
        i = sample_ids({k: v[row : row + 1] for k, v in batch.items()})[0]
        mean, std = np.array(images.CLIP_MEAN), np.array(images.CLIP_STD)
        np.testing.assert_allclose(
            batch["pixel_values"][row, 0, 0, 0], (i / 255 - mean) / std, rtol=1e-5
        )


def test_length_buckets():
    with build(num_epochs=1, shuffle=False, drop_remainder=False) as p:
        batches = list(p)
    lengths = {b["input_ids"].shape[1] for b in batches}
    assert lengths <= {9, 11, 13, 15} and len(lengths) > 1
    for batch in batches:
        longest = int(batch["attention_mask"].sum(1).max())
        bucket = batch["input_ids"].shape[1]
        assert longest <= bucket and not any(longest <= s < bucket for s in (9, 11, 13, 15))


def test_order_is_a_function_of_seed_and_epoch():
    with build() as a, build() as b, build(seed=8) as c:
        first, again, other = (sum((sample_ids(x) for x in take(p, 10)), []) for p in (a, b, c))
    assert first == again and first != other
    epoch0, epoch1 = first[:N], first[N:]
    assert sorted(epoch0) == list(range(N)) and epoch0 != epoch1  # reshuffled per epoch


def test_hosts_read_disjoint_shares_covering_everything():
    seen = []
    for host in range(2):
        with build(process_index=host, process_count=2, num_epochs=1, drop_remainder=False) as p:
            seen.append(sum((sample_ids(b) for b in p), []))
    assert len(seen[0]) == len(seen[1]) == N // 2
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(N))
    with build(num_epochs=1, drop_remainder=False) as single:
        global_order = sum((sample_ids(b) for b in single), [])
    assert seen[0] == global_order[0::2] and seen[1] == global_order[1::2]


@pytest.mark.parametrize("bad", [(), (3, 4, 11, 20, 21, 22)])
def test_resume_continues_at_next_unseen_example(bad):
    with build(ListSource(bad=bad)) as p:
        take(p, 5)
        state = json.loads(json.dumps(p.get_state()))  # survives a JSON checkpoint
        expected = take(p, 6)
    with build(ListSource(bad=bad)) as resumed:
        resumed.set_state(state)
        assert resumed.skip_log.counts == state["skipped"]  # counts carry over too
        got = take(resumed, 6)
    if bad:
        assert state["skipped"]["no_assistant_turn"] > 0
    for a, b in zip(expected, got):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_restore_into_different_layout_is_refused():
    with build() as p:
        next(p)
        state = p.get_state()
    with build(seed=9) as other, pytest.raises(ValueError, match="differently laid out"):
        other.set_state(state)
    with build(process_index=1, process_count=2) as other, pytest.raises(ValueError):
        other.set_state(state)


def test_final_partial_batch_is_padded_with_empty_rows():
    with build(ListSource(n=6), num_epochs=1, drop_remainder=False, shuffle=False) as p:
        batches = list(p)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4]
    last = batches[-1]
    assert last["attention_mask"][2:].sum() == 0 and not last["image_mask"][2:].any()


def test_make_global_batch():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = np.array(jax.devices())
    mesh = Mesh(devices, ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    with build(batch_size=4 * len(devices)) as p:
        batch = next(p)
        arrays = p.to_global(batch, sharding)
    for key, value in batch.items():
        assert arrays[key].shape == value.shape and arrays[key].sharding == sharding
        np.testing.assert_array_equal(np.asarray(arrays[key]), value)


def test_pad_to_length_for_cross_host_agreement():
    from comd_jax.data.batching import pad_to_length

    with build() as p:
        batch = next(p)
    padded = pad_to_length(batch, 24, pad_id=VOCAB["<pad>"])
    t = batch["input_ids"].shape[1]
    assert padded["input_ids"].shape == (4, 24)
    assert (padded["input_ids"][:, t:] == VOCAB["<pad>"]).all()
    assert padded["attention_mask"][:, t:].sum() == 0 and padded["loss_mask"][:, t:].sum() == 0
    np.testing.assert_array_equal(padded["pixel_values"], batch["pixel_values"])


def test_tfds_source_feeds_the_same_pipeline(tiny_world_spec, tiny_world_tfds, tmp_path):
    from transformers import AutoTokenizer

    from comd_jax.data.synthetic.tokenizer import build_world_tokenizer
    from comd_jax.data.tfds_source import TfdsSource

    spec_tokenizer = build_world_tokenizer(tiny_world_spec, str(tmp_path / "tok"), vocab_size=600)
    tokenizer = AutoTokenizer.from_pretrained(spec_tokenizer)
    source = TfdsSource.from_directory(tiny_world_tfds, "instructions")
    config = pipeline.PipelineConfig(batch_size=8, length_buckets=(96, 128, 160), strict=True)
    with pipeline.make_pipeline(
        source,
        template="vicuna_v1",
        tokenizer=tokenizer,
        image_config=images.ImageProcessorConfig(size=32),
        num_image_tokens=16,
        config=config,
    ) as p:
        batch = next(p)
    assert batch["pixel_values"].shape == (8, 1, 32, 32, 3)
    assert (batch["input_ids"] == tokenizer.convert_tokens_to_ids("<image>")).sum(1).tolist() == [
        16
    ] * 8


def test_a_pass_with_no_usable_sample_stops_with_the_reasons():
    # Every sample lacks an assistant turn: a repeating pipeline must not spin forever
    # (nor train on nothing); it stops after one pass and names the reason.
    from comd_jax.data import errors

    with build(ListSource(n=12, bad=range(12))) as pipe:
        with pytest.raises(errors.DataError, match=r"every sample was skipped.*by reason: \{'\w+': 12\}"):
            next(pipe)
