"""An external teacher that cannot score given answers is refused by URL before any compute
when the run asks for distill.kd; one that can (vLLM's shape) passes."""
import asyncio
import threading

import pytest
from aiohttp import web

from comd_jax import config as config_lib
from comd_jax.distill.driver import check_scoring
from comd_jax.serve.client import ScoringUnsupported, free_port


class Stub:
    """An OpenAI-compatible endpoint in a thread: `reply(body) -> (status, json)`."""

    def __init__(self, reply):
        self.reply, self.port, self.bodies = reply, free_port(), []

    def __enter__(self):
        async def chat(request):
            body = await request.json()
            self.bodies.append(body)
            status, out = self.reply(body)
            return web.json_response(out, status=status)

        async def models(request):
            return web.json_response({"data": [{"id": "m"}]})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/v1/models", models)
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _config(url, kd="topk"):
    c = config_lib.preset("smoke")
    c.distill.teacher_url, c.distill.teacher_model, c.distill.kd = url, "m", kd
    return c


ANSWER = {"choices": [{"message": {"content": "Hello."}, "finish_reason": "stop",
                       "logprobs": {"content": [{"token": "token_id:2", "logprob": -0.1,
                                                 "top_logprobs": [{"token": "token_id:2", "logprob": -0.1}]}]}}]}


def test_an_endpoint_without_prompt_logprobs_is_refused_by_url_before_any_compute():
    with Stub(lambda body: (200, ANSWER)) as stub:
        url = f"http://127.0.0.1:{stub.port}/v1"
        with pytest.raises(ScoringUnsupported, match=r"distill.kd='topk' needs a teacher that scores given answers.*"
                                                     rf"{stub.port}/v1/chat/completions.*no prompt_logprobs"):
            check_scoring(_config(url))
        body = stub.bodies[0]
        assert body["prompt_logprobs"] == 20 and body["continue_final_message"] is True
        assert body["messages"][-1]["role"] == "assistant" and body["add_generation_prompt"] is False
        check_scoring(_config(url, kd="none"))  # not asked for: not probed
        assert len(stub.bodies) == 1


def test_an_endpoint_that_refuses_the_fields_is_refused_too_and_one_that_scores_passes():
    refused = (400, {"error": {"message": "Unrecognized request argument supplied: prompt_logprobs"}})
    with Stub(lambda body: refused) as stub:
        with pytest.raises(ScoringUnsupported, match="Unrecognized request argument supplied: prompt_logprobs"):
            check_scoring(_config(f"http://127.0.0.1:{stub.port}/v1"))
    scored = {**ANSWER, "prompt_logprobs": [None, {"9": {"logprob": -1.0, "rank": 1, "decoded_token": "x"}}]}
    with Stub(lambda body: (200, scored)) as stub:
        check_scoring(_config(f"http://127.0.0.1:{stub.port}/v1"))


class FakePool:
    def entries(self):
        from comd_jax.distill.pool import PoolEntry

        return [PoolEntry("first", "Is it red?", "")]

    def images_of(self, entry):
        return []


class FakeStudent:
    def sample_tokens(self, entry):
        import numpy as np

        assert entry.target == "Yes."  # data without answers: a stand-in answer to score
        return np.array([1, 10, 11, 20, 2], np.int32), np.array([0, 0, 0, 1, 1], bool)


def _scoring(ids):
    def reply(body):
        return 200, {**ANSWER, "prompt_logprobs": [None] + [{str(i): {"logprob": -0.5}} for i in ids]}
    return reply


def test_a_teacher_with_another_tokenizer_is_refused_before_the_student_trains():
    from comd_jax.distill.driver import check_alignment
    from comd_jax.distill.kd_scores import TokenizerMismatch

    with Stub(_scoring([10, 11, 21])) as stub:  # the teacher's answer token is 21, the student's 20
        with pytest.raises(TokenizerMismatch, match="start-up check on pool entry first: at token 3 the student "
                                                    "has id 20"):
            check_alignment(_config(f"http://127.0.0.1:{stub.port}/v1"), FakeStudent(), FakePool())
    with Stub(_scoring([10, 11, 20])) as stub:
        check_alignment(_config(f"http://127.0.0.1:{stub.port}/v1"), FakeStudent(), FakePool())
