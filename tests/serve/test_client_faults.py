"""What real endpoints send, through the one client: Retry-After, rejections with the
endpoint's message and request id, and per-item faults (a body that is not JSON,
`content: null`, a refused image) skipped and counted instead of failing the run."""
import asyncio
import json
import os
import time

import pytest
from aiohttp import web

from comd_jax.data.synthetic import world
from comd_jax.distill import pool, rounds
from comd_jax.distill.augment import LLMAugmentor, ProceduralAugmentor, is_answer_not_instruction, reject_reason
from comd_jax.distill.judges import ReferenceJudge
from comd_jax.distill.protocol import Choice
from comd_jax.distill.selection import SelectionConfig
from comd_jax.serve.client import (ChatClient, ClientConfig, ItemSkipped, RequestRejected, TeacherUnavailable,
                                   error_message, retry_after_s)


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_s("3") == 3.0
    assert retry_after_s(" 0.5 ") == 0.5
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0  # in the past: now
    assert retry_after_s("soon") is None and retry_after_s(None) is None and retry_after_s("") is None


def test_error_message_reads_openai_and_vllm_shapes():
    body = {"error": {"message": "max_tokens is too large", "type": "invalid_request_error", "param": "max_tokens",
                      "code": None}}
    assert error_message(json.dumps(body)) == "max_tokens is too large (param=max_tokens)"
    assert error_message(json.dumps({"object": "error", "message": "model not found"})) == "model not found"
    assert error_message("<html>bad gateway</html>") == "<html>bad gateway</html>"


def completion(text, finish="stop"):
    return {"id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]}


class Scripted:
    """A loopback endpoint answering each request with the next scripted response."""

    def __init__(self, script, key=None):
        self.script, self.key, self.seen = list(script), key, []

    async def handle(self, request):
        self.seen.append({"headers": {k.lower(): v for k, v in request.headers.items()}, "body": await request.json(), "t": time.monotonic()})
        if self.key and request.headers.get("Authorization") != f"Bearer {self.key}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return step() if callable(step) else step


async def _serve(endpoint):
    app = web.Application()
    app.router.add_post("/v1/chat/completions", endpoint.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}/v1"


def run_against(script, call, key=None, **client):
    endpoint = Scripted(script, key)

    async def main():
        runner, url = await _serve(endpoint)
        try:
            c = ChatClient(ClientConfig(base_url=url, model="m", api_key=key, backoff_s=0.01, **client))
            return await call(c)
        finally:
            await runner.cleanup()

    return asyncio.run(main()), endpoint


def ask(c):
    return c.chat([{"role": "user", "content": "hi"}], max_tokens=4)


def test_a_503_with_retry_after_is_waited_out_and_the_bearer_key_sent():
    busy = lambda: web.json_response({"error": {"message": "overloaded"}}, status=503,  # noqa: E731
                                     headers={"Retry-After": "1"})
    got, endpoint = run_against([busy, lambda: web.json_response(completion("fine"))], ask, key="sk-test")
    assert got == [Choice("fine", "stop")]
    assert len(endpoint.seen) == 2
    assert endpoint.seen[1]["t"] - endpoint.seen[0]["t"] >= 0.9  # the asked second, not the 10 ms backoff
    assert all(s["headers"]["authorization"] == "Bearer sk-test" for s in endpoint.seen)
    # One id per request, kept across its retries.
    ids = {s["headers"]["x-request-id"] for s in endpoint.seen}
    assert len(ids) == 1 and ids.pop().startswith("comd-")


def test_a_429_storm_ends_in_teacher_unavailable_naming_the_url():
    limited = lambda: web.json_response({"error": {"message": "rate limit"}}, status=429)  # noqa: E731
    with pytest.raises(TeacherUnavailable, match=r"127\.0\.0\.1.*3 attempts.*429.*rate limit"):
        run_against([limited], ask, retries=2)


def test_a_retry_after_beyond_the_limit_gives_up_at_once():
    later = lambda: web.json_response({}, status=503, headers={"Retry-After": "86400"})  # noqa: E731
    with pytest.raises(TeacherUnavailable, match="1 attempts"):
        run_against([later], ask, retries=4)


def test_a_400_stops_with_the_endpoints_message_and_request_id_and_is_not_retried():
    bad = lambda: web.json_response(  # noqa: E731
        {"error": {"message": "This model's maximum context length is 4096 tokens", "param": "messages"}},
        status=400, headers={"x-request-id": "req-abc123"})
    with pytest.raises(RequestRejected) as info:
        run_against([bad, lambda: web.json_response(completion("never"))], ask)
    assert info.value.status == 400 and info.value.request_id == "req-abc123"
    assert "maximum context length is 4096" in str(info.value) and "req-abc123" in str(info.value)


def test_a_400_without_a_server_id_names_ours():
    bad = lambda: web.json_response({"error": {"message": "unknown field 'foo'"}}, status=400)  # noqa: E731
    with pytest.raises(RequestRejected) as info:
        _, endpoint = run_against([bad], ask)
    assert info.value.request_id.startswith("comd-") and "unknown field 'foo'" in str(info.value)


@pytest.mark.parametrize("response, reason", [
    (lambda: web.Response(text="<html>upstream hiccup</html>", content_type="text/html"), "not_json"),
    (lambda: web.json_response(completion(None, "stop")), "content_null"),
    (lambda: web.json_response({"id": "x", "choices": []}), "no_choices"),
    (lambda: web.json_response({"error": {"message": "image 0: not a readable image (cannot identify)"}},
                               status=400), "image_rejected"),
])
def test_per_item_faults_are_skipped_with_their_reason(response, reason):
    with pytest.raises(ItemSkipped) as info:
        run_against([response], ask)
    assert info.value.reason == reason
    # In a batch, the item gets its skip in place and the others their answers.
    script = [response, lambda: web.json_response(completion("ok"))]
    got, _ = run_against(script, lambda c: c.chat_many([([{"role": "user", "content": "a"}], {})] * 1
                                                       + [([{"role": "user", "content": "b"}], {})],
                                                       skipped_ok=True), max_concurrency=1)
    assert isinstance(got[0], ItemSkipped) and got[0].reason == reason
    assert got[1] == [Choice("ok", "stop")]


def test_finish_reason_length_is_kept():
    got, _ = run_against([lambda: web.json_response(completion("What colour is the", "length"))], ask)
    assert got == [Choice("What colour is the", "length")]
    assert reject_reason(got[0].text, got[0].finish_reason) == "truncated"


@pytest.mark.parametrize("text, answer", [
    ("What colour is the largest shape?", False),
    ("Describe the objects on the left side of the image.", False),
    ("Count the circles and say which one is biggest.", False),
    ("Based on the picture, what might the weather be?", False),
    ("The image shows a red circle next to a blue square.", True),
    ("There are three circles in the picture.", True),
    ("Yes, the square is to the left of the circle?", True),
    ("A red circle and a blue square.", True),
])
def test_an_answer_written_instead_of_an_instruction_is_told_apart(text, answer):
    assert is_answer_not_instruction(text) is answer
    assert (reject_reason(text, "stop") == "answer_not_instruction") is answer


class CreatorClient:
    """The teacher as instruction creator: tracks how many requests are in flight."""

    def __init__(self, replies):
        self.replies, self.inflight, self.peak = replies, 0, 0

    async def chat(self, messages, **params):
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        await asyncio.sleep(0.02)
        self.inflight -= 1
        given = messages[-1]["content"][-1]["text"].split("#Given Instruction#:\n")[1].split("\n")[0]
        reply = self.replies[given]
        if isinstance(reply, Exception):
            raise reply
        return [reply]


def test_the_llm_augmentor_asks_concurrently_in_seed_order_and_counts_every_drop():
    seeds = [pool.PoolEntry(f"s{i}", f"Question {i}?", "t") for i in range(8)]
    replies = {f"Question {i}?": Choice(f"What is shown in region {i}?") for i in range(8)}
    replies["Question 2?"] = Choice("What colour is the", "length")
    replies["Question 3?"] = Choice("A red circle.")
    replies["Question 4?"] = Choice("Red")
    replies["Question 5?"] = ItemSkipped("image_rejected", "HTTP 400: image 0 too large")
    client = CreatorClient(replies)
    aug = LLMAugmentor(client, concurrency=4)
    got = asyncio.run(aug.propose(seeds, 0, {}))
    assert client.peak == 4
    assert [c.seed.id for c in got] == ["s0", "s1", "s6", "s7"]
    assert aug.last_rejected == {"truncated": 1, "answer_not_instruction": 1, "too_short": 1,
                                 "creator_image_rejected": 1}


class SkippingJudge(ReferenceJudge):
    async def judge(self, question, teacher, student, images=(), *, reference, skill=None):
        if reference == self.skip_reference:
            raise ItemSkipped("content_null", "every choice's message.content is null")
        return await super().judge(question, teacher, student, images, reference=reference, skill=skill)


class FlakyTeacher:
    def __init__(self):
        self.calls = 0

    async def chat(self, messages, **params):
        self.calls += 1
        if self.calls % 3 == 0:
            raise ItemSkipped("not_json", "HTTP 200 with a body that is not JSON")
        return [Choice("an answer")]


def test_the_loop_skips_and_counts_unusable_judge_and_teacher_answers(tmp_path):
    spec = world.WorldSpec(seed=5)
    entries = []
    for i in range(8):
        ex = world.generate_example(spec, world.INSTRUCTIONS, i)
        entries.append(pool.PoolEntry(f"p{i:02d}", ex.conversations[0]["value"], ex.answer.split(" | ")[0],
                                      skill=ex.skill, reference=ex.answer.split(" | ")[0],
                                      provenance={"round": -1, "answered_by": "teacher"}))
    judge = SkippingJudge(metric_for=lambda skill: "f1")
    judge.skip_reference = entries[3].reference
    skipped_refs = sum(e.reference == judge.skip_reference for e in entries)
    teacher = FlakyTeacher()
    parts = rounds.Components(
        teacher=teacher, judge=judge,
        augmentor=ProceduralAugmentor(world.WorldSpec(seed=9), str(tmp_path / "images"), seed=1),
        answer_student=lambda r, es: ["no idea"] * len(es), tune=lambda r, path: None)
    cfg = rounds.DistillConfig(rounds=1, selection=SelectionConfig(threshold=1.0, easy_keep=0.0), seed=3)
    loop = rounds.Loop(cfg, str(tmp_path), parts)
    loop.seed_pool(entries)
    state = loop.run()
    summary = {h["phase"]: h for h in state["history"]}
    assert summary["assess"]["skipped"] == {"content_null": skipped_refs}
    assert summary["select"]["excluded"] == skipped_refs  # excluded, never scored 0
    records = [json.loads(line) for line in open(tmp_path / "distill" / "round0_assess.jsonl")]
    assert sum(r.get("skipped") == "content_null" for r in records) == skipped_refs
    aug = summary["augment"]
    assert aug["dropped"]["teacher_not_json"] == teacher.calls // 3 > 0
    assert aug["added"] == aug["candidates"] - aug["dropped"]["teacher_not_json"]
    pooled = pool.load(os.path.join(tmp_path, "distill", "train_pool.jsonl"))
    assert len(pooled) == len(entries) + aug["added"]
    assert all(e.target for e in pooled)  # nothing unusable reached the training pool
