"""top_logprobs (issue 27's server part): the engine's k most likely tokens at every generated
position equal the model's own log-softmax there, to 1e-5, for greedy decoding of a prompt
with an image; the wire format and its limit; the client reads them from any endpoint."""
import numpy as np
import pytest

from comd_jax.serve import protocol
from comd_jax.serve.client import ItemSkipped, choices_of
from comd_jax.serve.engine import Engine, EngineConfig
from comd_jax.serve.prompts import Limits, RequestError
from comd_jax.serve.requests import Request, Result
from comd_jax.serve.sampling import SamplingParams
from tests.tiny_vlm import IMAGE, PATCHES, tiny_vlm


class Chars:
    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def test_top_logprobs_equal_the_models_log_softmax_at_each_generated_position():
    model = tiny_vlm(seed=5)
    engine = Engine(model, Chars(), EngineConfig(max_batch=2, max_seq_len=64, chunk=4))
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((1, 16, 16, 3)).astype(np.float32)
    prompt = np.concatenate([[1, 7], [IMAGE] * PATCHES, [9, 10, 11]]).astype(np.int32)
    k, new = 5, 9
    try:
        params = SamplingParams(max_tokens=new, temperature=0, logprobs=True, top_logprobs=k)
        got, plain = engine.generate_batch([Request(prompt, pixels, params),
                                            Request(prompt, pixels, SamplingParams(max_tokens=new, temperature=0))])
    finally:
        engine.shutdown()
    assert plain.top_logprobs is None and plain.token_ids == got.token_ids  # asking changes no answer
    assert len(got.top_logprobs) == new and all(len(top) == k for top in got.top_logprobs)
    # The reference: one forward over prompt + answer, log-softmax at the positions that predicted it.
    ids = np.concatenate([prompt, got.token_ids])[None]
    logits = np.asarray(model.logits(ids, pixels.transpose(0, 3, 1, 2)))[0].astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    for i, top in enumerate(got.top_logprobs):
        row = logp[len(prompt) - 1 + i]
        want = np.argsort(-row)[:k]
        assert [t for t, _ in top] == want.tolist()
        np.testing.assert_allclose([v for _, v in top], row[want], atol=1e-5)
        assert top[0][0] == got.token_ids[i] and abs(top[0][1] - got.logprobs[i]) < 1e-6  # greedy: the argmax


def test_the_request_limit_on_k_and_the_response_format():
    limits = Limits(max_top_logprobs=3)
    body = {"messages": [], "logprobs": True, "top_logprobs": 3}
    params, _ = protocol.sampling_params(body, limits)
    assert params.logprobs and params.top_logprobs == 3
    with pytest.raises(RequestError, match=r"'top_logprobs' must be in \[0, 3\], got 4"):
        protocol.sampling_params({**body, "top_logprobs": 4}, limits)
    with pytest.raises(RequestError, match="'top_logprobs' needs 'logprobs': true"):
        protocol.sampling_params({"messages": [], "top_logprobs": 2}, limits)
    with pytest.raises(ValueError, match="max_top_logprobs must be in"):
        Limits(max_top_logprobs=21)
    result = Result("ab", [0, 1], "length", 3, logprobs=[-0.1, -0.2], top_logprobs=[[(0, -0.1), (5, -2.5)],
                                                                                   [(1, -0.2), (2, -3.0)]])
    content = protocol.completion([result], "m", Chars())["choices"][0]["logprobs"]["content"]
    assert content[1] == {"token": "b", "logprob": -0.2, "bytes": [98],
                          "top_logprobs": [{"token": "b", "logprob": -0.2, "bytes": [98]},
                                           {"token": "c", "logprob": -3.0, "bytes": [99]}]}


def test_the_client_reads_logprobs_from_a_vllm_shaped_reply_and_refuses_malformed_ones():
    body = {"choices": [{"message": {"content": "Red."}, "finish_reason": "stop", "logprobs": {"content": [
        {"token": "Red", "logprob": -0.5, "top_logprobs": [{"token": "Red", "logprob": -0.5},
                                                           {"token": "Blue", "logprob": -1.5}]},
        {"token": ".", "logprob": -0.1, "top_logprobs": []}]}}]}
    (choice,) = choices_of(body)
    assert choice.logprobs[0].token == "Red" and choice.logprobs[0].top == (("Red", -0.5), ("Blue", -1.5))
    assert choice.logprobs[1].logprob == -0.1 and choice.logprobs[1].top == ()
    assert choices_of({"choices": [{"message": {"content": "x"}}]})[0].logprobs is None  # not asked, not sent
    bad = {"choices": [{"message": {"content": "x"}, "logprobs": {"content": [{"token": "x"}]}}]}
    with pytest.raises(ItemSkipped, match="logprobs are malformed"):
        choices_of(bad, "req-1")
