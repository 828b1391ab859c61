"""The teacher server as a real child process on the smoke preset's random
teacher, driven by the official `openai` client and by raw HTTP for the
malformed-request suite. One server for the whole module (it compiles once)."""
import asyncio
import base64
import io
import json
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest
from PIL import Image

from comd_jax.serve.client import ChatClient, ClientConfig, RequestRejected, ServerProcess, TeacherUnavailable, \
    free_port, user_message

def image_tokens() -> int:
    """The smoke teacher's image tokens per image, from the config the server runs."""
    from comd_jax import config as config_lib

    return config_lib.model_config(config_lib.preset("smoke").teacher).num_image_tokens


KEY = "test-key"
MODEL = "comd-teacher"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serve")
    with ServerProcess("configs/comd.py:smoke", workdir=str(workdir), api_key=KEY, model_name=MODEL) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120)


def test_the_key_reaches_the_child_through_its_environment_not_its_command_line(server, client):
    cmdline = open(f"/proc/{server.proc.pid}/cmdline", "rb").read().decode()
    assert KEY not in cmdline and KEY not in " ".join(server.args)  # ps shows a command line to everyone
    assert "--api_key_env=COMD_SERVE_API_KEY" in server.args
    assert ask(client, "hi").choices  # and the child requires it
    wrong = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        ask(wrong, "hi")


def png(width=32, height=32, seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()}}


def ask(client, text, images=(), **kw):
    content = [image_part(i) for i in images] + [{"type": "text", "text": text}]
    kw.setdefault("max_tokens", 6)
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kw)


def test_text_request_shape_and_greedy_repeat(client):
    a = ask(client, "What colour is the circle?", temperature=0, logprobs=True)
    b = ask(client, "What colour is the circle?", temperature=0)
    assert a.object == "chat.completion" and a.model == MODEL and len(a.choices) == 1
    assert a.choices[0].finish_reason == "length" and a.usage.completion_tokens == 6
    assert len(a.choices[0].logprobs.content) == 6 and all(t.logprob <= 0 for t in a.choices[0].logprobs.content)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_image_requests(client):
    one = ask(client, "Describe the image.", [png()], temperature=0)
    two = ask(client, "Compare them.", [png(), png(40, 20, seed=1)], temperature=0)
    plain = ask(client, "Describe the image.", temperature=0)
    patches = image_tokens()
    # One image adds its patch tokens plus the "<image>\n" text around them.
    assert plain.usage.prompt_tokens + patches < one.usage.prompt_tokens <= plain.usage.prompt_tokens + patches + 2
    assert two.usage.prompt_tokens > one.usage.prompt_tokens + patches


def test_n_and_seeds(client):
    first = ask(client, "How many shapes?", n=3, temperature=1.0, top_p=0.9, seed=7, max_tokens=8)
    again = ask(client, "How many shapes?", n=3, temperature=1.0, top_p=0.9, seed=7, max_tokens=8)
    other = ask(client, "How many shapes?", n=3, temperature=1.0, top_p=0.9, seed=8, max_tokens=8)
    texts = lambda r: [c.message.content for c in r.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts(first) == texts(again)
    assert len(set(texts(first))) > 1 and texts(first) != texts(other)


def test_stop_strings(client):
    full = ask(client, "Is it big?", temperature=0, max_tokens=12).choices[0].message.content
    stop = full[3:5]
    cut = ask(client, "Is it big?", temperature=0, max_tokens=12, stop=[stop, "never-seen"]).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == full[:full.find(stop)]


def test_concurrent_greedy_equals_single(client, server):
    prompts = [f"What colour is shape {i}?" for i in range(16)]
    singles = [ask(client, p, temperature=0).choices[0].message.content for p in prompts]

    async def all_at_once():
        aclient = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=300)
        msgs = [[{"role": "user", "content": p}] for p in prompts * 4]
        replies = await asyncio.gather(*(aclient.chat.completions.create(
            model=MODEL, messages=m, temperature=0, max_tokens=6) for m in msgs))
        await aclient.close()
        return [r.choices[0].message.content for r in replies]

    assert asyncio.run(all_at_once()) == singles * 4


def raw(server, body, *, key=KEY, path="/v1/chat/completions"):
    """(status, JSON body) for a raw POST; body may be bytes (sent as is)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(server.base_url.removesuffix("/v1") + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def chat(content, **kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **kw}


def data_url(payload: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(payload).decode()}}


BAD = {
    "bad json": b'{"model": "comd-teacher", "messages": [',
    "not an object": b"[1, 2]",
    "messages not a list": {"model": MODEL, "messages": "hi"},
    "missing messages": {"model": MODEL},
    "content wrong type": chat(5),
    "unknown part": chat([{"type": "audio", "data": "x"}]),
    "role wrong": {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]},
    "temperature a string": chat("hi", temperature="hot"),
    "n zero": chat("hi", n=0),
    "n huge": chat("hi", n=1000),
    "max_tokens negative": chat("hi", max_tokens=-3),
    "too many output tokens": chat("hi", max_tokens=100000),
    "stop wrong type": chat("hi", stop=[1, 2]),
    "seed a float": chat("hi", seed=1.5),
    "stream": chat("hi", stream=True),
    "bad base64": chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@not base64@@@"}}]),
    "not an image": chat([data_url(b"this is plain text, not a PNG")]),
    "truncated image": chat([data_url(png()[:60])]),
    "huge image": chat([data_url(png(2100, 2100))]),
    "too many images": chat([data_url(png())] * 5 + [{"type": "text", "text": "hi"}]),
    "remote url": chat([{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]),
    "local file url": chat([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]),
    "placeholder in text": chat("<image> hi"),
    "prompt too long": chat("What " * 2000),
    "unknown model": {**chat("hi"), "model": "gpt-9"},
}


def test_malformed_requests_get_4xx_and_server_lives(server):
    for name, body in BAD.items():
        status, reply = raw(server, body)
        assert 400 <= status < 500, (name, status, reply)
        assert reply["error"]["message"], name
    assert raw(server, chat("hi"), key=None)[0] == 401
    assert raw(server, chat("hi"), key="wrong")[0] == 401
    assert raw(server, b"x" * (17 * 2 ** 20))[0] == 413
    assert raw(server, chat("hi"))[0] == 200
    with urllib.request.urlopen(server.base_url.removesuffix("/v1") + "/health", timeout=10) as r:
        health = json.loads(r.read())
    # Not warmed up (the test server starts without --warm_up): its first requests compiled.
    assert health["status"] == "ok" and health["warmed_up"] is False and health["compiles_since_start"] > 0


def test_our_client(server):
    ours = ChatClient(ClientConfig(server.base_url, MODEL, api_key=KEY, max_concurrency=4))
    got = ours.chat_many_sync([([user_message("Is it red?", [png()])], {"temperature": 0, "max_tokens": 4})] * 3)
    assert len(got) == 3 and got[0] == got[1] == got[2] and len(got[0]) == 1
    assert got[0][0].text and got[0][0].finish_reason in ("stop", "length")  # max_tokens=4: likely cut
    with pytest.raises(RequestRejected, match="404"):
        ChatClient(ClientConfig(server.base_url, "nope", api_key=KEY)).chat_sync([user_message("hi")])
    dead = ChatClient(ClientConfig(f"http://127.0.0.1:{free_port()}/v1", MODEL, retries=2, backoff_s=0.01))
    with pytest.raises(TeacherUnavailable, match="3 attempts"):
        dead.chat_sync([user_message("hi")])


def test_scoring_a_given_answer_with_an_image_through_the_server(server):
    """vLLM's prompt_logprobs with continue_final_message: every prompt position rated, the prompt's
    own token in every entry, images expanded in the positions; the client reads it; the limits."""
    from comd_jax.serve.client import ChatClient, ClientConfig, score_body

    messages = [user_message("Describe the image.", [png()]), {"role": "assistant", "content": "A red circle."}]
    status, reply = raw(server, score_body(MODEL, messages, 5))
    assert status == 200, reply
    scored = reply["prompt_logprobs"]
    assert len(scored) == reply["usage"]["prompt_tokens"] > image_tokens() and scored[0] is None
    for entry in scored[1:]:
        assert 5 <= len(entry) <= 6  # the top 5, and the prompt's own token when it is not among them
        best = min(entry.values(), key=lambda e: e["rank"])
        assert best["rank"] == 1 and best["logprob"] == max(e["logprob"] for e in entry.values())
        assert all(e["decoded_token"] == f"token_id:{i}" for i, e in entry.items())
    client = ChatClient(ClientConfig(server.base_url, MODEL, api_key=KEY))
    scores = asyncio.run(client.score(messages, 5))
    assert len(scores.positions) == len(scored) and len(scores.final) == 5
    assert scores.positions[-1] == {int(i): e["logprob"] for i, e in scored[-1].items()}
    client.probe_scoring(5)  # our server can score: the run may use kd
    for bad, param in (({"prompt_logprobs": 21}, "prompt_logprobs"),
                       ({"add_generation_prompt": True}, "add_generation_prompt"),
                       ({"messages": messages[:1]}, "messages")):
        status, reply = raw(server, {**score_body(MODEL, messages, 5), **bad})
        assert status == 400 and reply["error"]["param"] == param, reply


def test_top_logprobs_through_the_server(server):
    status, reply = raw(server, chat("Is it red?", max_tokens=3, temperature=0, logprobs=True, top_logprobs=4))
    assert status == 200, reply
    content = reply["choices"][0]["logprobs"]["content"]
    assert len(content) == reply["usage"]["completion_tokens"]
    for entry in content:
        tops = entry["top_logprobs"]
        assert len(tops) == 4 and [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert tops[0]["logprob"] == pytest.approx(entry["logprob"], abs=1e-6)  # greedy: the argmax was taken
    status, reply = raw(server, chat("hi", logprobs=True, top_logprobs=21))
    assert status == 400 and reply["error"]["param"] == "top_logprobs"
