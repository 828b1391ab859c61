"""The one client protocol the distillation loop uses for teacher, judge and
augmentor, against any OpenAI-compatible base URL (our server, vLLM, ...).

- `ChatClient.chat(messages, **params)` → list of `Choice` (text and finish
  reason, which the augmentor's truncation filter reads) (async); `chat_many`
  runs many at once under a concurrency limit; `*_sync` wrap both.
- Timeouts per request; retries with exponential backoff on connection errors,
  timeouts, 429 and 5xx; then `TeacherUnavailable` naming the URL and the last
  cause. Other 4xx are the caller's mistake: `RequestRejected` at once, with
  the server's message.
- `user_message(text, images)` builds OpenAI content parts with base64 data URLs.
- `ServerProcess` starts our server (launch/serve_teacher.py) as a child,
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
from typing import Optional, Sequence

import aiohttp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str = "stop"  # "length" means the answer was cut at max_tokens


class TeacherUnavailable(RuntimeError):
    """The endpoint did not answer within the retry budget."""


class RequestRejected(ValueError):
    """The endpoint refused the request (4xx other than 429)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


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


class ChatClient:
    def __init__(self, config: ClientConfig):
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}

    async def _post(self, session, semaphore, body: dict) -> dict:
        cfg, last = self.config, None
        for attempt in range(cfg.retries + 1):
            if attempt:
                await asyncio.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            try:
                async with semaphore, session.post(self.url, json=body, headers=self._headers()) as resp:
                    if resp.status == 200:
                        return await resp.json()
                    text = await resp.text()
                    if resp.status != 429 and resp.status < 500:
                        raise RequestRejected(resp.status, text)
                    last = f"HTTP {resp.status}: {text[:500]}"
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as e:
                last = f"{type(e).__name__}: {e}"
        raise TeacherUnavailable(f"{self.url}: no answer after {cfg.retries + 1} attempts; last: {last}")

    async def chat_many(self, requests: Sequence[tuple]) -> list:
        """[(messages, params dict)] → [[Choice]], in order; all at once, at most
        `max_concurrency` in flight."""
        semaphore = asyncio.Semaphore(self.config.max_concurrency)
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            replies = await asyncio.gather(*(
                self._post(session, semaphore, {"model": self.config.model, "messages": list(m), **p})
                for m, p in requests))
        return [[Choice(c["message"]["content"] or "", c.get("finish_reason") or "stop") for c in r["choices"]]
                for r in replies]

    async def chat(self, messages, **params) -> list:
        return (await self.chat_many([(messages, params)]))[0]

    def chat_many_sync(self, requests: Sequence[tuple]) -> list:
        return asyncio.run(self.chat_many(requests))

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


class ServerProcess:
    """Our server as a child process: `with ServerProcess(config_arg, workdir=...) as server:`
    then `server.base_url`. The launcher is found beside the package (editable install)."""

    def __init__(self, config: str, *, workdir: str, port: Optional[int] = None, checkpoint: Optional[str] = None,
                 api_key: Optional[str] = None, model_name: str = "comd-teacher", extra_args: Sequence[str] = (),
                 startup_timeout_s: float = 600.0, env: Optional[dict] = None):
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.model_name = model_name
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        launcher = os.path.join(repo, "launch", "serve_teacher.py")
        # --distributed=none: the child is its own one-process JAX program, even when it inherits
        # SLURM or TPU variables from a multi-host parent.
        self.args = [sys.executable, os.path.normpath(launcher), f"--config={config}", f"--port={self.port}",
                     f"--workdir={workdir}", f"--model_name={model_name}", "--distributed=none", *extra_args]
        if checkpoint:
            self.args.append(f"--checkpoint={checkpoint}")
        if api_key:
            self.args.append(f"--api_key={api_key}")
        self.startup_timeout_s = startup_timeout_s
        # The child imports this very package, installed or not (a checkout run in place).
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, self.env.get("PYTHONPATH")) if p)
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
