"""The one client protocol the distillation loop uses for teacher, judge and
augmentor, against any OpenAI-compatible base URL (our server, vLLM, ...).

- `ChatClient.chat(messages, **params)` → list of `Choice` (text and finish
  reason, which the augmentor's truncation filter reads) (async); `chat_many`
  runs many at once; `*_sync` wrap both. All calls in one event loop share one
  session (kept-alive connections) and at most `max_concurrency` requests in flight.
- Timeouts per request; retries with exponential backoff on connection errors,
  timeouts, 429 and 5xx, waiting at least what a `Retry-After` header asks;
  then `TeacherUnavailable` naming the URL and the last cause.
- Every request carries an `X-Request-Id` (vLLM and OpenAI echo or replace it);
  errors name the id the server reports, else ours.
- Other 4xx are the caller's mistake: `RequestRejected` at once, with the
  endpoint's message and the request id, and never retried.
- What one item's request gets wrong, the item pays for, not the run: an image
  the server refuses (a 4xx that names an image), a 200 whose body is not JSON
  or has no choices, `content: null`. That is `ItemSkipped(reason, message)`;
  `chat_many(..., skipped_ok=True)` returns it in the item's place.
- `score(messages, k)`: the endpoint's top-k log-probabilities at every position of a given
  answer (vLLM's `prompt_logprobs` with `continue_final_message`) as `PromptScores`;
  `probe_scoring(k)` refuses an endpoint that cannot (`ScoringUnsupported`).
- `user_message(text, images)` builds OpenAI content parts with base64 data URLs.
- `ServerProcess` starts our server (`python -m comd_jax.serve`) as a child,
  waits for /health, and stops it (SIGTERM, then kill).
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from typing import Optional, Sequence

import aiohttp
import numpy as np


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple = ()  # ((token, logprob), ...), most likely first, when top_logprobs was asked for


@dataclasses.dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str = "stop"  # "length" means the answer was cut at max_tokens
    # per generated token, when the request asked for logprobs and the endpoint sent them
    logprobs: Optional[tuple] = None


@dataclasses.dataclass(frozen=True)
class PromptScores:
    """How an endpoint rated a prompt that ends inside the final assistant message (`score`).

    `positions[t]`: {token id: logprob} at prompt position t (what the model gave prompt token t,
    with the k most likely there); None for the first token. `final`: {token id: logprob} of the
    k most likely next tokens after the prompt (where training puts the answer's end token)."""
    positions: tuple
    final: dict


class ScoringUnsupported(RuntimeError):
    """The endpoint answered a scoring request without the scores (no `prompt_logprobs`, or
    tokens not named by id): it cannot serve white-box distillation."""


class TeacherUnavailable(RuntimeError):
    """The endpoint did not answer within the retry budget."""


class RequestRejected(ValueError):
    """The endpoint refused the request (4xx other than 429)."""

    def __init__(self, status: int, message: str, request_id: str = "", url: str = ""):
        where = f"{url}: " if url else ""
        rid = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{where}HTTP {status}{rid}: {message}")
        self.status, self.message, self.request_id = status, message, request_id


class ItemSkipped(RuntimeError):
    """One request's answer is unusable; its item is skipped and counted under `reason`
    ("image_rejected", "not_json", "no_choices", "content_null")."""

    def __init__(self, reason: str, message: str, request_id: str = ""):
        super().__init__(f"{reason}: {message}" + (f" (request id {request_id})" if request_id else ""))
        self.reason, self.message, self.request_id = reason, message, request_id


SKIP_REASONS = ("image_rejected", "not_json", "no_choices", "content_null")
MAX_RETRY_AFTER_S = 300.0  # a server asking for longer is treated as down


def retry_after_s(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """A `Retry-After` header (seconds, or an HTTP date) as seconds from now; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def error_message(text: str) -> str:
    """The message of an OpenAI-shaped error body ({"error": {"message": ...}}), else the text."""
    import json

    try:
        body = json.loads(text)
    except ValueError:
        return text[:2000]
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        extra = ", ".join(f"{k}={err[k]}" for k in ("param", "code") if err.get(k))
        return str(err["message"]) + (f" ({extra})" if extra else "")
    if isinstance(err, str):
        return err
    if isinstance(body, dict) and isinstance(body.get("message"), str):  # vLLM's older shape
        return body["message"]
    return text[:2000]


def _names_image(text: str) -> bool:
    return "image" in text.lower()


def _logprobs_of(choice: dict, request_id: str) -> Optional[tuple]:
    """A choice's `logprobs.content` (OpenAI's chat format, as vLLM sends it), or None."""
    content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    if not isinstance(content, list):
        return None
    try:
        return tuple(TokenLogprob(str(e["token"]), float(e["logprob"]),
                                  tuple((str(t["token"]), float(t["logprob"])) for t in e.get("top_logprobs") or ()))
                     for e in content)
    except (KeyError, TypeError, ValueError) as e:
        raise ItemSkipped("bad_logprobs", f"the choice's logprobs are malformed ({e!r}): {str(content)[:300]}",
                          request_id) from e


def choices_of(body, request_id: str = "") -> list:
    """A chat completion's choices; `ItemSkipped` when there is no usable one."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices:
        raise ItemSkipped("no_choices", f"the answer has no choices: {str(body)[:300]}", request_id)
    out = []
    for c in choices:
        message = c.get("message") if isinstance(c, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts, as some servers return them
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if content is None:
            continue
        out.append(Choice(str(content), c.get("finish_reason") or "stop", _logprobs_of(c, request_id)))
    if not out:
        raise ItemSkipped("content_null", f"every choice's message.content is null "
                          f"(finish_reason {choices[0].get('finish_reason') if isinstance(choices[0], dict) else None})",
                          request_id)
    return out


def _token_id(name, where: str) -> int:
    """An id from vLLM's `return_tokens_as_token_ids` naming ("token_id:123")."""
    if isinstance(name, str) and name.startswith("token_id:") and name[9:].lstrip("-").isdigit():
        return int(name[9:])
    raise ScoringUnsupported(f"{where}: token {name!r} is not named by id (the endpoint ignores "
                             "return_tokens_as_token_ids)")


def scores_of(body, request_id: str = "", url: str = "") -> PromptScores:
    """A scoring request's reply (vLLM's shape) → PromptScores; `ScoringUnsupported` when the
    endpoint left the scores out, `ItemSkipped("bad_logprobs")` when they are malformed."""
    where = f"{url} (request id {request_id})" if url else f"request id {request_id}"
    raw = body.get("prompt_logprobs") if isinstance(body, dict) else None
    if not isinstance(raw, list) or not raw:
        raise ScoringUnsupported(f"{where}: the reply has no prompt_logprobs (keys: "
                                 f"{sorted(body) if isinstance(body, dict) else type(body).__name__})")
    try:
        positions = tuple(None if entry is None else
                          {int(i): float(v["logprob"] if isinstance(v, dict) else v) for i, v in entry.items()}
                          for entry in raw)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ItemSkipped("bad_logprobs", f"prompt_logprobs are malformed ({e!r}): {str(raw)[:300]}",
                          request_id) from e
    (choice, *_) = choices_of(body, request_id)
    if not choice.logprobs:
        raise ScoringUnsupported(f"{where}: the reply has no logprobs for the generated token")
    final = {_token_id(t, where): v for t, v in choice.logprobs[0].top}
    if not final:
        raise ScoringUnsupported(f"{where}: the reply has no top_logprobs for the generated token")
    return PromptScores(positions, final)


def score_body(model: str, messages, k: int) -> dict:
    """The request that scores the final assistant message of `messages` (vLLM's fields): every
    prompt position's k most likely tokens, and the next token's, one token generated."""
    return {"model": model, "messages": list(messages), "max_tokens": 1, "temperature": 0.0, "logprobs": True,
            "top_logprobs": k, "prompt_logprobs": k, "continue_final_message": True,
            "add_generation_prompt": False, "return_tokens_as_token_ids": True}


def _png_data_url(image) -> str:
    """bytes (already encoded), a uint8 [H, W, 3] array or a PIL image → data URL."""
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    else:
        from PIL import Image

        pil = Image.fromarray(np.asarray(image, np.uint8)) if isinstance(image, np.ndarray) else image
        buf = io.BytesIO()
        pil.save(buf, format="PNG")
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def user_message(text: str, images: Sequence = ()) -> dict:
    """A user turn: its images first (LLaVA's `<image>\\n` then the question), then text."""
    parts = [{"type": "image_url", "image_url": {"url": _png_data_url(im)}} for im in images]
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


def openai_base(url: str) -> str:
    """A base URL as the `openai` client takes it (`.../v1`); one given without `/v1` gets it."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") or "/v1/" in url else url + "/v1"


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: Optional[str] = None
    max_concurrency: int = 16
    timeout_s: float = 300.0
    retries: int = 4
    backoff_s: float = 0.5  # doubles each retry


async def _closing(session):
    """Held while its loop runs: `asyncio.run` finalizes live async generators before it closes
    the loop, and this one then closes the session."""
    try:
        yield
    finally:
        await session.close()


class ChatClient:
    def __init__(self, config: ClientConfig):
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        # One session (kept-alive connections) and one concurrency limit per event loop, shared by
        # every call in it: a session per request paid a connection per request.
        self._per_loop = weakref.WeakKeyDictionary()

    async def _shared(self):
        loop = asyncio.get_running_loop()
        got = self._per_loop.get(loop)
        if got is None or got[0].closed:
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
                                            connector=aiohttp.TCPConnector(limit=0))
            holder = _closing(session)
            await holder.__anext__()
            got = self._per_loop[loop] = (session, asyncio.Semaphore(self.config.max_concurrency), holder)
        return got[0], got[1]

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}

    async def _post(self, session, semaphore, body: dict, parse=choices_of):
        import json
        import uuid

        cfg, last, wait = self.config, None, 0.0
        ours = f"comd-{uuid.uuid4().hex}"
        headers = {**self._headers(), "X-Request-Id": ours}
        for attempt in range(cfg.retries + 1):
            if attempt:
                await asyncio.sleep(max(wait, cfg.backoff_s * 2 ** (attempt - 1)))
            wait = 0.0
            try:
                async with semaphore, session.post(self.url, json=body, headers=headers) as resp:
                    rid = resp.headers.get("x-request-id") or ours
                    text = await resp.text()
                    if resp.status == 200:
                        try:
                            parsed = json.loads(text)
                        except ValueError:
                            raise ItemSkipped("not_json", f"{self.url}: HTTP 200 with a body that is not JSON "
                                              f"({resp.content_type}): {text[:300]!r}", rid) from None
                        return parse(parsed, rid)
                    if resp.status != 429 and resp.status < 500:
                        message = error_message(text)
                        if _names_image(message):
                            raise ItemSkipped("image_rejected", f"{self.url}: HTTP {resp.status}: {message}", rid)
                        raise RequestRejected(resp.status, message, rid, self.url)
                    last = f"HTTP {resp.status} (request id {rid}): {error_message(text)[:500]}"
                    asked = retry_after_s(resp.headers.get("Retry-After"))
                    if asked is not None:
                        if asked > MAX_RETRY_AFTER_S:
                            break
                        wait = asked
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as e:
                last = f"{type(e).__name__}: {e}"
        raise TeacherUnavailable(f"{self.url}: no answer after {attempt + 1} attempts; last: {last}")

    async def _post_many(self, bodies: Sequence[dict], parse, skipped_ok: bool) -> list:
        """Every body posted at once (at most `max_concurrency` in flight), parsed, in order."""
        session, semaphore = await self._shared()

        async def one(body):
            try:
                return await self._post(session, semaphore, body, parse)
            except ItemSkipped as e:
                if skipped_ok:
                    return e
                raise

        return list(await asyncio.gather(*(one(b) for b in bodies)))

    async def chat_many(self, requests: Sequence[tuple], *, skipped_ok: bool = False) -> list:
        """[(messages, params dict)] → [[Choice]], in order; all at once, at most
        `max_concurrency` in flight. With `skipped_ok`, an item whose answer is unusable
        gets its `ItemSkipped` in its place instead of failing the batch."""
        return await self._post_many([{"model": self.config.model, "messages": list(m), **p} for m, p in requests],
                                     choices_of, skipped_ok)

    async def score_many(self, requests: Sequence[tuple], *, skipped_ok: bool = False) -> list:
        """[(messages ending with the assistant's answer, k)] → [PromptScores], in order (the
        teacher's top-k at every position of a given answer, images included)."""
        return await self._post_many([score_body(self.config.model, m, k) for m, k in requests],
                                     lambda body, rid: scores_of(body, rid, self.url), skipped_ok)

    async def score(self, messages, k: int) -> PromptScores:
        return (await self.score_many([(messages, k)]))[0]

    def probe_scoring(self, k: int) -> None:
        """Refuses, before any compute, an endpoint that cannot score a given answer with top-k
        log-probabilities (`ScoringUnsupported` naming the URL and what was missing)."""
        messages = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello."}]
        try:
            scores = asyncio.run(self.score(messages, k))
        except RequestRejected as e:
            raise ScoringUnsupported(f"{self.url} refused a scoring request (prompt_logprobs, "
                                     f"continue_final_message, return_tokens_as_token_ids): {e}") from None
        if not any(p is not None for p in scores.positions):
            raise ScoringUnsupported(f"{self.url}: prompt_logprobs holds no scored position")

    async def chat(self, messages, **params) -> list:
        return (await self.chat_many([(messages, params)]))[0]

    def chat_many_sync(self, requests: Sequence[tuple], *, skipped_ok: bool = False) -> list:
        return asyncio.run(self.chat_many(requests, skipped_ok=skipped_ok))

    def chat_sync(self, messages, **params) -> list:
        return asyncio.run(self.chat(messages, **params))


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it when the parent dies, so a killed
    launcher (e.g. SIGKILL mid-run) leaves no orphaned server holding a port."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVE_KEY_ENV = "COMD_SERVE_API_KEY"  # how ServerProcess hands its child the key


class ServerProcess:
    """Our server as a child process: `with ServerProcess(config_arg, workdir=...) as server:`
    then `server.base_url`. The child runs `python -m comd_jax.serve`."""

    def __init__(self, config: str, *, workdir: str, port: Optional[int] = None, checkpoint: Optional[str] = None,
                 api_key: Optional[str] = None, model_name: str = "comd-teacher", extra_args: Sequence[str] = (),
                 startup_timeout_s: float = 600.0, env: Optional[dict] = None):
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.model_name = model_name
        # --distributed=none: the child is its own one-process JAX program, even when it inherits
        # SLURM or TPU variables from a multi-host parent.
        self.args = [sys.executable, "-m", "comd_jax.serve", f"--config={config}", f"--port={self.port}",
                     f"--workdir={workdir}", f"--model_name={model_name}", "--distributed=none", *extra_args]
        if checkpoint:
            self.args.append(f"--checkpoint={checkpoint}")
        self.startup_timeout_s = startup_timeout_s
        # The child imports this very package, installed or not (a checkout run in place).
        self.env = dict(os.environ if env is None else env)
        if api_key:  # through the child's environment: a command line is anyone's to read (ps)
            self.env[SERVE_KEY_ENV] = api_key
            self.args.append(f"--api_key_env={SERVE_KEY_ENV}")
        site = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (site, self.env.get("PYTHONPATH")) if p)
        self.proc: Optional[subprocess.Popen] = None
        self.log = None

    def start(self) -> "ServerProcess":
        self.log = tempfile.NamedTemporaryFile("w+", prefix="serve_teacher_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
                                     preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.wait_healthy()
        return self

    def _log_tail(self, chars: int = 4000) -> str:
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()[-chars:]

    def wait_healthy(self) -> None:
        import urllib.request

        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"server not healthy after {self.startup_timeout_s} s:\n{self._log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> Optional[int]:
        """SIGTERM (graceful: in-flight requests finish), then SIGKILL after `timeout_s`."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if self.log is not None:
            self.log.close()
            os.unlink(self.log.name)
