"""Scoring a given continuation (issue 27's server part): vLLM's `prompt_logprobs` with
`continue_final_message`. The engine's scores at every prompt position equal the model's own
log-softmax there, to 1e-5, with an image in the prompt; the wire format carries them with the
prompt's own token in every entry; the client reads them back; an endpoint without them is
refused by name."""
import numpy as np
import pytest

from comd_jax.data.templates import get_template
from comd_jax.serve import protocol
from comd_jax.serve.client import PromptScores, ScoringUnsupported, score_body, scores_of
from comd_jax.serve.engine import Engine, EngineConfig
from comd_jax.serve.prompts import Limits, RequestError
from comd_jax.serve.requests import Request, Result
from comd_jax.serve.sampling import SamplingParams
from tests.tiny_vlm import IMAGE, PATCHES, tiny_vlm


class Chars:
    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def log_softmax(logits):
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def test_prompt_scores_equal_the_models_log_softmax_at_every_position_with_an_image():
    model = tiny_vlm(seed=3)
    engine = Engine(model, Chars(), EngineConfig(max_batch=4, max_seq_len=64, chunk=4))
    pixels = np.random.default_rng(1).standard_normal((1, 16, 16, 3)).astype(np.float32)
    # A prompt that ends inside the answer being scored: turn, image, question, then the answer.
    ids = np.concatenate([[1, 7], [IMAGE] * PATCHES, [9, 10, 11], [30, 41, 52, 63]]).astype(np.int32)
    k = 6
    scored = SamplingParams(max_tokens=1, temperature=0, logprobs=True, top_logprobs=k, prompt_logprobs=k)
    try:
        got, plain, other = engine.generate_batch([
            Request(ids, pixels, scored), Request(ids, pixels, SamplingParams(max_tokens=1, temperature=0)),
            Request(np.array([1, 7, 9], np.int32), None, SamplingParams(max_tokens=2, temperature=0,
                                                                        prompt_logprobs=0))])
    finally:
        engine.shutdown()
    logp = log_softmax(np.asarray(model.logits(ids[None], pixels.transpose(0, 3, 1, 2)))[0])
    assert plain.prompt_logprobs is None and plain.token_ids == got.token_ids  # scoring changes no answer
    assert len(got.prompt_logprobs) == len(ids) and got.prompt_logprobs[0] is None
    for t in range(1, len(ids)):
        value, rank, tops = got.prompt_logprobs[t]
        row = logp[t - 1]  # position t - 1 rates token t
        assert abs(value - row[ids[t]]) < 1e-5
        assert rank == 1 + int(np.sum(row > row[ids[t]] + 1e-9))
        want = np.argsort(-row)[:k]
        assert [i for i, _ in tops] == want.tolist()
        np.testing.assert_allclose([v for _, v in tops], row[want], atol=1e-5)
    # The position after the prompt (where training puts the end token): the generated token's top-k.
    want = np.argsort(-logp[-1])[:k]
    assert [i for i, _ in got.top_logprobs[0]] == want.tolist() and got.token_ids[0] == want[0]
    np.testing.assert_allclose([v for _, v in got.top_logprobs[0]], logp[-1][want], atol=1e-5)
    # k = 0: each token's own logprob and rank, no alternatives; a text-only row in the same group.
    assert [len(p[2]) for p in other.prompt_logprobs[1:]] == [0, 0]


class CharsEndingAt(Chars):
    def __init__(self, eos):
        self.eos_token_id = eos


def test_an_answer_the_teacher_would_end_at_once_still_rates_its_end_token():
    """A trained teacher's next token after a complete answer is EOS: the one generated token
    is not in the text, but its logprob and top-k close the logprobs, as vLLM reports them."""
    model = tiny_vlm(seed=3)
    ids = np.array([1, 7, 9, 10, 11, 30], np.int32)
    logp = log_softmax(np.asarray(model.logits(ids[None], None))[0])[-1]
    want = np.argsort(-logp)[:4]
    engine = Engine(model, CharsEndingAt(int(want[0])), EngineConfig(max_batch=2, max_seq_len=64, chunk=4))
    try:
        (got,) = engine.generate_batch([Request(ids, None, SamplingParams(
            max_tokens=1, temperature=0, logprobs=True, top_logprobs=4, prompt_logprobs=4))])
    finally:
        engine.shutdown()
    assert got.token_ids == [] and got.finish_reason == "stop" and got.logprobs == []
    end_id, end_logp, top = got.end_logprob
    assert end_id == want[0] and abs(end_logp - logp[want[0]]) < 1e-5
    assert [i for i, _ in top] == want.tolist()
    np.testing.assert_allclose([v for _, v in top], logp[want], atol=1e-5)
    options = protocol.PromptOptions(True, False, True)
    body = protocol.completion([got], "m", Chars(), ids, options)
    assert body["choices"][0]["message"]["content"] == ""
    # vLLM counts the end token among the output tokens: one generated, none in the text
    assert body["usage"]["completion_tokens"] == 1 == got.completion_tokens
    assert body["choices"][0]["logprobs"]["content"][0]["token"] == f"token_id:{end_id}"
    scores = scores_of(body, "r0")
    assert list(scores.final) == want.tolist()


def test_a_stop_string_before_the_end_token_cuts_there_in_the_same_chunk():
    from comd_jax.serve.requests import Sequence

    class Letters(Chars):
        eos_token_id = 25

    seq = Sequence(Request(np.array([1], np.int32), None, SamplingParams(max_tokens=8, stop=("c",), logprobs=True)),
                   0, frozenset([25]), Letters())
    assert seq.extend([0, 1, 2, 3, 25], [-0.1] * 5)  # "abcd" then EOS, in one decode chunk
    result = seq.result()
    assert result.text == "ab" and result.token_ids == [0, 1, 2] and result.end_logprob is None
    assert result.completion_tokens == 3  # the EOS after the cut was never an output token
    ended = Sequence(Request(np.array([1], np.int32), None, SamplingParams(max_tokens=8)), 0, frozenset([25]),
                     Letters())
    assert ended.extend([0, 1, 25, 3], [-0.1] * 4)  # EOS after "ab", logprobs not asked
    assert ended.result().token_ids == [0, 1] and ended.result().completion_tokens == 3


def test_the_wire_format_is_vllms_and_the_client_reads_it_back():
    # prompt [5, 6, 7]: position 0 rates 6 (in the top-2), position 1 rates 7 (outside it: added).
    result = Result("x", [2], "length", 3, logprobs=[-0.3], top_logprobs=[[(2, -0.3), (9, -1.9)]],
                    prompt_logprobs=[None, (-0.5, 1, [(6, -0.5), (8, -1.2)]), (-4.0, 17, [(3, -0.1), (4, -2.6)])])
    options = protocol.PromptOptions(continue_final=True, generation_prompt=False, token_ids=True)
    body = protocol.completion([result], "m", Chars(), np.array([5, 6, 7]), options)
    assert body["prompt_logprobs"][0] is None
    assert body["prompt_logprobs"][1] == {"6": {"logprob": -0.5, "rank": 1, "decoded_token": "token_id:6"},
                                          "8": {"logprob": -1.2, "rank": 2, "decoded_token": "token_id:8"}}
    assert body["prompt_logprobs"][2]["7"] == {"logprob": -4.0, "rank": 17, "decoded_token": "token_id:7"}
    assert body["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["token"] == "token_id:9"
    import json

    scores = scores_of(json.loads(json.dumps(body)), "r1")  # through JSON, keys as strings
    assert scores == PromptScores((None, {6: -0.5, 8: -1.2}, {3: -0.1, 4: -2.6, 7: -4.0}), {2: -0.3, 9: -1.9})
    plain = protocol.completion([Result("x", [2], "length", 3)], "m", Chars(), np.array([5, 6, 7]))
    assert "prompt_logprobs" not in plain


def test_request_fields_limits_and_errors():
    limits = Limits(max_top_logprobs=4)
    body = score_body("m", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], 4)
    params, _ = protocol.sampling_params(body, limits)
    assert params.prompt_logprobs == 4 and params.top_logprobs == 4 and params.max_tokens == 1
    assert protocol.prompt_options(body) == protocol.PromptOptions(True, False, True)
    assert protocol.sampling_params({"messages": []}, limits)[0].prompt_logprobs is None
    with pytest.raises(RequestError, match=r"'prompt_logprobs' must be in \[0, 4\], got 5") as e:
        protocol.sampling_params({**body, "prompt_logprobs": 5}, limits)
    assert e.value.param == "prompt_logprobs"
    with pytest.raises(RequestError, match="cannot both be true"):
        protocol.prompt_options({"continue_final_message": True, "add_generation_prompt": True})
    with pytest.raises(RequestError, match="'continue_final_message' must be a boolean"):
        protocol.prompt_options({"continue_final_message": "yes"})


def test_the_continuation_is_the_training_text_up_to_the_end_token():
    for name in ("vicuna_v1", "chatml", "plain", "llama_2"):
        template = get_template(name)
        turns = [("user", "<image>\nWhat is it?"), ("assistant", "A red circle.")]
        trained = "".join(s.text for s in template.render(turns, bos="<s>", eos="</s>"))
        prefix = template.render_continuation(turns, bos="<s>", eos="</s>")
        assert trained.startswith(prefix) and prefix.endswith("A red circle.")
        assert trained[len(prefix):].strip() in ("</s>", "<|im_end|>")
    with pytest.raises(ValueError, match="ends with an assistant turn"):
        get_template("vicuna_v1").render_continuation([("user", "q")])


def test_an_endpoint_without_scores_is_refused_by_name():
    answer = {"choices": [{"message": {"content": "Hi"}, "logprobs": {"content": [
        {"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1}]}]}}]}
    with pytest.raises(ScoringUnsupported, match="http://x/v1/chat/completions .*no prompt_logprobs"):
        scores_of(answer, "r2", "http://x/v1/chat/completions")
    with pytest.raises(ScoringUnsupported, match="not named by id"):  # return_tokens_as_token_ids ignored
        scores_of({**answer, "prompt_logprobs": [None, {"5": {"logprob": -1.0}}]}, "r3")
