"""After the engine's warm-up no request compiles anything: every shape the scheduler can
reach (decode, prefill with and without images, insertion, growth) was compiled first."""
import time

import numpy as np

from comd_jax.serve import warmup
from comd_jax.serve.engine import Engine, EngineConfig
from comd_jax.serve.requests import Request
from comd_jax.serve.sampling import SamplingParams
from tests.tiny_vlm import IMAGE, PATCHES, tiny_vlm
CONFIG = EngineConfig(max_batch=4, max_seq_len=64, batch_buckets=(1, 4), seq_buckets=(32, 64),
                      prompt_buckets=(16, 32, 64), prefill_group=(1, 2, 4), chunk=4)


class NoEos:
    eos_token_id = None

    def decode(self, ids, **kw):
        return ""


def _engine(hidden=32):
    return Engine(tiny_vlm(seed=0, hidden=hidden), NoEos(), CONFIG)


def test_the_plan_lists_every_bucket_the_limits_reach():
    p = warmup.plan(CONFIG, max_prompt_tokens=40, max_images=1, vision=True)
    assert p.decode == ((1, 32), (1, 64), (4, 32), (4, 64))
    # prompts up to 40 tokens: buckets 16, 32, 64; a group of k prompts has 0..k images (powers of two)
    assert {(k, n) for k, _, n in p.prefill} == {(1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (4, 0), (4, 1), (4, 2),
                                                 (4, 4)}
    assert {t for _, t, _ in p.prefill} == {16, 32, 64}
    assert (4, 32, 4, 32) in p.insert and (1, 32, 2, 16) not in p.insert  # never more prompts than rows
    assert (4, 32, 1, 64) not in p.insert  # never a prompt longer than the cache
    assert ((1, 32), (4, 64)) in p.grow and ((4, 64), (1, 32)) not in p.grow
    assert not warmup.plan(CONFIG, max_prompt_tokens=40, max_images=1, vision=False).prefill[1][2]


def _traffic(engine, rng):
    """Text and image requests of every length, arriving while others decode (the cache grows)."""
    pixels = rng.standard_normal((1, 16, 16, 3)).astype(np.float32)
    futures = []
    for i in range(10):
        if i % 3 == 0:
            ids = np.concatenate([[1], [IMAGE] * PATCHES, rng.integers(5, 96, int(rng.integers(1, 20)))])
            scored = 0 if i % 2 else None  # prompt_logprobs (scoring an answer): a runtime branch too
            req = Request(ids.astype(np.int32), pixels, SamplingParams(max_tokens=int(rng.integers(1, 20)),
                                                                       temperature=0, prompt_logprobs=scored))
        else:
            ids = rng.integers(5, 96, int(rng.integers(1, 40))).astype(np.int32)
            asks = i % 5 == 1  # top_logprobs is a runtime branch of the same kernels
            req = Request(ids, None, SamplingParams(max_tokens=int(rng.integers(1, 64 - len(ids))),
                                                    temperature=float(i % 2), logprobs=asks, top_logprobs=3 * asks))
        futures.append(engine.submit(req))
        time.sleep(0.02 * (i % 4))
    return [f.result() for f in futures]


def test_after_the_warm_up_no_request_compiles():
    engine = _engine()  # a model no other test compiles for: the warm-up alone compiled its shapes
    try:
        warmup.warm_up(engine, max_prompt_tokens=40, max_images=1)
        with warmup.CompileCounter() as warm:
            results = _traffic(engine, np.random.default_rng(2))
        assert warm.count == 0
        assert all(r.token_ids for r in results) and any(r.top_logprobs for r in results)
        assert any(r.prompt_logprobs for r in results)
    finally:
        engine.shutdown()
    engine = _engine(hidden=48)  # and the counter does see compiles: one request, cold, makes some
    try:
        with warmup.CompileCounter() as cold:
            engine.submit(Request(np.arange(5, 12, dtype=np.int32), None,
                                  SamplingParams(max_tokens=3, temperature=0))).result()
        assert cold.count > 0
    finally:
        engine.shutdown()


def test_a_second_engine_on_the_same_model_reuses_the_compiled_kernels():
    """The kernels key on the model's handle by value: a server that makes its engine again
    (or a bench that makes one per batch size) compiles nothing the first one compiled."""
    model = tiny_vlm(seed=0, hidden=40)  # a size no other test compiles for
    request = Request(np.arange(5, 12, dtype=np.int32), None, SamplingParams(max_tokens=6, temperature=0))
    first, second = Engine(model, NoEos(), CONFIG), Engine(model, NoEos(), CONFIG)
    try:
        with warmup.CompileCounter() as cold:
            want = first.submit(request).result().token_ids
        with warmup.CompileCounter() as warm:
            got = second.submit(request).result().token_ids
        assert cold.count > 0 and warm.count == 0 and got == want
        assert first.handle is not second.handle and first.handle == second.handle
    finally:
        first.shutdown()
        second.shutdown()
