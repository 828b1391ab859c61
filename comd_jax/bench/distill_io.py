"""Does the loop keep an endpoint busy? Assessment and augmentation over HTTP vs the ideal rate.

  python -m comd_jax.bench.distill_io [--items=1000] [--concurrency=8,32] [--latency_ms=100] [--image_px=0]

A local OpenAI-compatible endpoint, in a child process, answers every chat request after a
fixed `--latency_ms`: the judge gets "8 7" score lines, the instruction creator a new
question of random words (so the filters keep it), the teacher a short answer. The loop's own
code runs against it (`Loop._assess` with `LLMJudge`, `Loop._augment` with `LLMAugmentor`
and the teacher client, every pool item a seed), with the student's answers given.

An endpoint with latency L serves at most concurrency / L requests per second to a client
that keeps `concurrency` requests in flight: that is the peer. Goal: at least 0.8 of it, so
the loop never waits on itself. Prints requests/s per phase and concurrency, and the ratio
(measured / ideal) at the largest concurrency last.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time


# -- the endpoint (child process) -------------------------------------------------------------

def serve(port: int, latency_s: float) -> None:
    import random

    from aiohttp import web

    rng = random.Random(0)
    count = {"n": 0}

    async def chat(request):
        body = await request.json()
        count["n"] += 1
        await asyncio.sleep(latency_s)
        content = body["messages"][-1]["content"]
        prompt = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
        if "Instruction Creator" in prompt:
            texts = ["Which " + " ".join(f"w{rng.randrange(100_000)}" for _ in range(8)) + "?"
                     for _ in range(body.get("n", 1))]
        elif "Assistant 1" in prompt:
            texts = ["8 7\nAssistant 1 is more accurate."]
        else:
            texts = ["A short answer from the teacher."]
        return web.json_response({"id": "x", "object": "chat.completion", "model": body.get("model", "m"),
                                  "choices": [{"index": i, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": t}}
                                              for i, t in enumerate(texts)]})

    async def stats(request):
        return web.json_response(count)

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _requests_served(port: int) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats") as r:
        return json.load(r)["n"]


# -- the loop against it ------------------------------------------------------------------------

def _image(px: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(px, px, 3), dtype=np.uint8)  # photos compress little
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def run_phases(port: int, items: int, concurrency: int, image_px: int, workdir: str) -> dict:
    from comd_jax.distill import pool as pool_lib
    from comd_jax.distill.augment import LLMAugmentor
    from comd_jax.distill.judges import LLMJudge
    from comd_jax.distill.rounds import Components, DistillConfig, Loop
    from comd_jax.serve.client import ChatClient, ClientConfig

    def client():
        return ChatClient(ClientConfig(f"http://127.0.0.1:{port}/v1", "bench", max_concurrency=concurrency))

    image = _image(image_px) if image_px else None
    entries = [pool_lib.PoolEntry(f"p{i:05d}", ("<image>\n" if image else "") + f"What is shown in part {i}?",
                                  "A teacher answer.", image="x.png" if image else None) for i in range(items)]
    parts = Components(teacher=client(), judge=LLMJudge(client(), max_tokens=64),
                       augmentor=LLMAugmentor(client(), per_seed=1, concurrency=concurrency),
                       answer_student=lambda r, chunk: ["A student answer."] * len(chunk),
                       tune=lambda r, path: None, images_of=lambda e: [image] if image else [])
    loop = Loop(DistillConfig(concurrency=concurrency, max_new_per_round=items), workdir, parts)
    loop.seed_pool(entries)
    def timed(phase):
        served, start = _requests_served(port), time.perf_counter()
        summary = phase()
        seconds, n = time.perf_counter() - start, _requests_served(port) - served
        return summary, {"requests": n, "seconds": seconds, "req_per_s": n / seconds}

    out = {}
    summary, out["assess"] = timed(lambda: loop._assess(0))
    out["assess"]["assessed"] = summary["assessed"]
    with open(loop.path("selection.json", 0), "w") as f:  # every item a seed
        json.dump({"hard": [e.id for e in entries], "easy_kept": [], "student_wins": [], "excluded": []}, f)
    summary, out["augment"] = timed(lambda: loop._augment(0))
    out["augment"]["added"] = summary["added"]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--concurrency", default="8,32")
    parser.add_argument("--latency_ms", type=float, default=100.0)
    parser.add_argument("--image_px", type=int, default=0, help="0: text only; 336: one LLaVA-1.5-sized PNG each")
    parser.add_argument("--serve_port", type=int, default=0, help=argparse.SUPPRESS)  # the child's role
    args = parser.parse_args(argv)
    latency = args.latency_ms / 1000
    if args.serve_port:
        return serve(args.serve_port, latency)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("comd_jax").setLevel(logging.WARNING)

    from comd_jax.serve.client import free_port

    port = free_port()
    child = subprocess.Popen([sys.executable, "-m", "comd_jax.bench.distill_io", f"--serve_port={port}",
                              f"--latency_ms={args.latency_ms}"])
    try:
        for _ in range(200):
            try:
                _requests_served(port)
                break
            except OSError:
                time.sleep(0.05)
        logging.info("load average %s, %d CPUs; %d items, latency %.0f ms, images %s",
                     " ".join(f"{x:.2f}" for x in os.getloadavg()), os.cpu_count(), args.items, args.latency_ms,
                     f"{args.image_px}px" if args.image_px else "none")
        ratio = None
        for c in (int(x) for x in args.concurrency.split(",")):
            ideal = c / latency
            with tempfile.TemporaryDirectory() as workdir:
                got = run_phases(port, args.items, c, args.image_px, workdir)
            for phase, m in got.items():
                logging.info("concurrency %3d  %-7s %5d requests in %6.2f s: %7.1f req/s (ideal %.0f, %.2f)",
                             c, phase, m["requests"], m["seconds"], m["req_per_s"], ideal, m["req_per_s"] / ideal)
            ratio = min(m["req_per_s"] for m in got.values()) / ideal
        logging.info("goal: >= 0.80 of concurrency/latency in every phase")
        print(f"ratio measured/ideal (slowest phase, largest concurrency): {ratio:.2f}")
    finally:
        child.terminate()
        child.wait()


if __name__ == "__main__":
    main()
