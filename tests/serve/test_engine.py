"""The engine in process: greedy parity with `greedy_generate`, batching that does
not change results, seeds, top-p, stop strings and EOS bookkeeping."""
import dataclasses
import time

import numpy as np
import pytest

from comd_jax.models.generate import greedy_generate
from comd_jax.serve.engine import Engine, EngineConfig, bucket
from comd_jax.serve.requests import Request, Sequence
from comd_jax.serve.sampling import SamplingParams
from tests.tiny_vlm import IMAGE, PATCHES, tiny_vlm



class Chars:
    """Token i decodes to chr(ord('a') + i % 26); EOS is 2."""

    eos_token_id = 2

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i % 26) for i in ids)


@pytest.fixture(scope="module")
def engine():
    model = tiny_vlm(seed=3, max_positions=256)
    tok = Chars()
    tok.eos_token_id = None  # parity runs never stop early
    e = Engine(model, tok, EngineConfig(max_batch=4, max_seq_len=128, chunk=4))
    yield model, e
    e.shutdown()


def greedy(n):
    return SamplingParams(max_tokens=n, temperature=0)


def test_bucket():
    assert bucket(3, (1, 4, 8)) == 4 and bucket(8, (1, 4, 8)) == 8 and bucket(5, (1, 4, 8), cap=6) == 6
    with pytest.raises(ValueError):
        bucket(9, (1, 4, 8))


def test_greedy_matches_greedy_generate_and_batching_changes_nothing(engine):
    model, e = engine
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((1, 16, 16, 3)).astype(np.float32)
    image_prompt = np.concatenate([[1, 7], [IMAGE] * PATCHES, [9, 10]]).astype(np.int32)
    prompts = [image_prompt] + [rng.integers(5, 96, n).astype(np.int32) for n in (3, 9, 5, 12)]
    reqs = [Request(p, pixels if i == 0 else None, greedy(7 + i)) for i, p in enumerate(prompts)]
    together = e.generate_batch(reqs)  # 5 requests, 4 rows: the fifth joins when a row frees
    for req, got in zip(reqs, together):
        want = greedy_generate(model, req.prompt_ids[None], None if req.pixels is None else req.pixels,
                               max_new_tokens=req.params.max_tokens)[0]
        assert got.token_ids == want.tolist() and got.finish_reason == "length"
        assert e.generate_batch([req])[0].token_ids == got.token_ids


def test_seeds_and_top_p(engine):
    _, e = engine
    prompt = np.arange(5, 15, dtype=np.int32)
    sample = lambda seed, p=1.0: e.generate_batch([Request(prompt, None, SamplingParams(
        max_tokens=12, temperature=1.0, top_p=p, seed=seed, logprobs=True))])[0]
    a, b, c = sample(1), sample(1), sample(2)
    assert a.token_ids == b.token_ids != c.token_ids and len(a.logprobs) == 12
    nucleus = sample(5, p=1e-6)  # only the most likely token survives: greedy
    assert nucleus.token_ids == e.generate_batch([Request(prompt, None, greedy(12))])[0].token_ids


def test_rejects_too_long_and_image_mismatch(engine):
    _, e = engine
    with pytest.raises(ValueError, match="exceeds"):
        e.submit(Request(np.ones(100, np.int32), None, greedy(64)))
    with pytest.raises(ValueError, match="image"):
        e.submit(Request(np.array([1, IMAGE, 3], np.int32), None, greedy(2)))


def test_sequence_stops():
    tok = Chars()
    req = lambda **kw: Request(np.ones(3, np.int32), None, SamplingParams(**kw))
    s = Sequence(req(max_tokens=10), 0, frozenset([2]), tok)
    assert not s.extend([0, 1], [-1.0, -1.0]) and s.extend([3, 2, 5], [-1.0] * 3)
    assert s.result().text == "abd" and s.result().finish_reason == "stop"
    s = Sequence(req(max_tokens=3), 0, frozenset([2]), tok)
    assert s.extend([0, 1, 3, 4], [-1.0] * 4) and s.result().token_ids == [0, 1, 3]
    assert s.result().finish_reason == "length"
    s = Sequence(req(max_tokens=10, stop=("cd", "zz")), 0, frozenset(), tok)
    assert s.extend([0, 1, 2, 3, 4], [-1.0] * 5)
    r = s.result()
    assert r.text == "ab" and r.token_ids == [0, 1, 2, 3] and r.finish_reason == "stop"


def test_a_cache_that_grows_under_running_rows_keeps_their_tokens(engine):
    """Rows already decoding are carried into a larger cache (more rows and slots) when a
    longer request joins: every answer, to its log-probabilities, is the one it gets alone."""
    model, _ = engine
    tok = Chars()
    tok.eos_token_id = None
    e = Engine(model, tok, EngineConfig(max_batch=4, max_seq_len=128, chunk=2, batch_buckets=(1, 2, 4),
                                        seq_buckets=(16, 32, 64, 128), prompt_buckets=(16, 32, 64, 128)))
    try:
        rng = np.random.default_rng(1)
        params = SamplingParams(max_tokens=10, temperature=0, logprobs=True)
        short = Request(rng.integers(5, 96, 3).astype(np.int32), None, params)
        long = Request(rng.integers(5, 96, 12).astype(np.int32), None, dataclasses.replace(params, max_tokens=40))
        first = e.submit(short)
        time.sleep(0.2)  # the first is admitted alone and decoding (compiling) when the others arrive
        futures = [first, e.submit(long), e.submit(short)]
        results = [f.result() for f in futures]
        for req, got in zip((short, long, short), results):
            alone = e.generate_batch([req])[0]
            assert got.token_ids == alone.token_ids
            np.testing.assert_allclose(got.logprobs, alone.logprobs, rtol=1e-5, atol=1e-6)
    finally:
        e.shutdown()


def test_the_engine_unstacks_its_own_copy_of_the_layers_and_leaves_the_callers(engine):
    from flax import nnx

    model, e = engine
    assert not isinstance(model.text.layers, nnx.List)  # training code still scans the stack
    own = nnx.merge(e.graphdef, e.state)
    assert isinstance(own.text.layers, nnx.List) and len(own.text.layers) == model.cfg.text.num_layers
    np.testing.assert_array_equal(np.asarray(own.text.layers[1].q.kernel[...]),
                                  np.asarray(model.text.layers.q.kernel[...][1]))
    x = np.zeros((1, 3, model.cfg.text.hidden_size), np.float32)
    with pytest.raises(ValueError, match="only decodes with a KV cache"):
        own.text(x, np.arange(3)[None])
