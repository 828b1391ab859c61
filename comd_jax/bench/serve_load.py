"""Server load: N concurrent clients against our teacher server (a child process).

  python -m comd_jax.bench.serve_load [--config=configs/comd.py:default] [--clients=64] [--requests=4]
                                      [--max-tokens=32] [--limits=128,64,1] [--url=http://host:port/v1 --model=NAME]

Each client sends `--requests` chat requests one after another (greedy, a short
text question, `--max-tokens` new tokens). Without --url the bench starts our server
(`python -m comd_jax.serve --warm_up`, random weights, the request limits `--limits`:
prompt tokens, output tokens, images) and, once it has stopped, the same engine in
process on the same requests all at once: the engine's own batch throughput at the
same concurrency. Prints the load average, completed requests, generated tokens/s,
p50/p99 latency, the compiles the server made after its warm-up (from /health), and
last the ratio server / engine throughput.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time

import numpy as np

log = logging.getLogger(__name__)


async def _client(session, url: str, model: str, index: int, requests: int, max_tokens: int, latencies, tokens):
    for r in range(requests):
        body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": f"What colour is shape {index} number {r}?"}]}
        start = time.perf_counter()
        async with session.post(url, json=body) as resp:
            reply = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {reply}")
        latencies.append(time.perf_counter() - start)
        tokens.append(reply["usage"]["completion_tokens"])


async def _load(base_url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    import aiohttp

    url = base_url.rstrip("/") + "/chat/completions"
    latencies, tokens = [], []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(_client(session, url, model, i, requests, max_tokens, latencies, tokens)
                               for i in range(clients)))
        wall = time.perf_counter() - start
    return {"requests": len(latencies), "tokens_per_s": sum(tokens) / wall, "requests_per_s": len(latencies) / wall,
            "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99)), "wall": wall}


def _health(base_url: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/health", timeout=30) as r:
        return json.loads(r.read())


def _engine_throughput(config_arg: str, overrides: dict, workdir: str, clients: int, requests: int,
                       max_tokens: int) -> float:
    """Generated tokens/s of the server's engine in process, every request submitted at once."""
    from comd_jax import config as config_lib
    from comd_jax.serve.loading import engine_from_config, limits_of
    from comd_jax.serve.engine import EngineConfig
    from comd_jax.serve.sampling import SamplingParams

    config = config_lib.load_config_file(config_arg)
    for key, value in overrides.items():
        config.serve[key] = value
    limits = limits_of(config)
    engine, prompter = engine_from_config(config, workdir, None, limits=limits, engine_config=EngineConfig(
        max_seq_len=limits.max_prompt_tokens + limits.max_output_tokens))
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    batch = [prompter.request([{"role": "user", "content": f"What colour is shape {i} number {r}?"}], params)
             for i in range(clients) for r in range(requests)]
    try:
        engine.generate_batch(batch)  # compile
        start = time.perf_counter()
        results = engine.generate_batch(batch)
        wall = time.perf_counter() - start
    finally:
        engine.shutdown()
    return sum(r.completion_tokens for r in results) / wall  # as the server's usage counts them


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/comd.py:default")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4, help="per client, sequential")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--limits", default="128,64,1",
                        help="the started server's max prompt tokens, max output tokens, max images")
    parser.add_argument("--url", default=None, help="an already running OpenAI-compatible endpoint")
    parser.add_argument("--model", default="comd-teacher")
    parser.add_argument("--workdir", default=None, help="where the offline world is (built if missing)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # others' INFO stays quiet
    log.setLevel(logging.INFO)
    from comd_jax.cli import config_arg
    from comd_jax.serve.client import ServerProcess

    log.info("load average at start %s", " ".join(f"{x:.2f}" for x in os.getloadavg()))

    def run(url):
        return asyncio.run(_load(url, args.model, args.clients, args.requests, args.max_tokens))

    engine_rate = None
    if args.url:
        r, health = run(args.url), None
    else:
        prompt, output, images = (int(x) for x in args.limits.split(","))
        overrides = dict(max_prompt_tokens=prompt, max_output_tokens=output, max_images=images)
        spec = config_arg.resolve_value(args.config)
        with tempfile.TemporaryDirectory() as tmp:
            workdir = args.workdir or tmp
            started = time.perf_counter()
            with ServerProcess(spec, workdir=workdir, model_name=args.model, startup_timeout_s=3600,
                               extra_args=["--warm_up"] + [f"--config.serve.{k}={v}" for k, v in overrides.items()]
                               ) as server:
                log.info("server up and warmed in %.1f s", time.perf_counter() - started)
                r = run(server.base_url)
                health = _health(server.base_url)
            engine_rate = _engine_throughput(spec, overrides, workdir, args.clients, args.requests, args.max_tokens)
    log.info("%d clients x %d requests, %d tokens each: %d done in %.1f s", args.clients, args.requests,
                 args.max_tokens, r["requests"], r["wall"])
    log.info("throughput %.1f generated tok/s, %.2f req/s", r["tokens_per_s"], r["requests_per_s"])
    log.info("latency p50 %.0f ms   p99 %.0f ms   (p99 / p50 %.2f)", r["p50"] * 1e3, r["p99"] * 1e3,
                 r["p99"] / r["p50"])
    if health is not None:
        log.info("server: warmed up %s, compiles after the warm-up %s", health.get("warmed_up"),
                     health.get("compiles_since_start"))
    log.info("load average at end %s", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if engine_rate:
        log.info("the engine in process, the same requests at once: %.1f generated tok/s", engine_rate)
        print(f"ratio server / engine throughput: {r['tokens_per_s'] / engine_rate:.2f}")


if __name__ == "__main__":
    main()
