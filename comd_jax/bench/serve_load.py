"""Server load: N concurrent clients against our teacher server (a child process).

  python -m comd_jax.bench.serve_load [--config=configs/comd.py:default] [--clients=32] [--requests=4]
                                      [--max-tokens=32] [--url=http://host:port/v1 --model=NAME]

Each client sends `--requests` chat requests one after another (greedy, a short
text question, `--max-tokens` new tokens). Prints completed requests, generated
tokens/s over the whole run, and p50/p99 request latency. Without --url it
starts `launch/serve_teacher.py` on random weights and warms it up first.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

import numpy as np


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
        await _client(session, url, model, -1, 2, max_tokens, [], [])  # warm-up (compiles)
        start = time.perf_counter()
        await asyncio.gather(*(_client(session, url, model, i, requests, max_tokens, latencies, tokens)
                               for i in range(clients)))
        wall = time.perf_counter() - start
    return {"requests": len(latencies), "tokens_per_s": sum(tokens) / wall, "requests_per_s": len(latencies) / wall,
            "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99)), "wall": wall}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/comd.py:default")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4, help="per client, sequential")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--url", default=None, help="an already running OpenAI-compatible endpoint")
    parser.add_argument("--model", default="comd-teacher")
    parser.add_argument("--workdir", default=None, help="where the offline world is (built if missing)")
    args = parser.parse_args(argv)
    from comd_jax.serve.client import ServerProcess

    def run(url):
        return asyncio.run(_load(url, args.model, args.clients, args.requests, args.max_tokens))

    if args.url:
        r = run(args.url)
    else:
        with tempfile.TemporaryDirectory() as tmp, ServerProcess(args.config, workdir=args.workdir or tmp,
                                                                  model_name=args.model) as server:
            r = run(server.base_url)
    print(f"{args.clients} clients x {args.requests} requests, {args.max_tokens} tokens each: "
          f"{r['requests']} done in {r['wall']:.1f} s")
    print(f"throughput {r['tokens_per_s']:.1f} generated tok/s, {r['requests_per_s']:.2f} req/s")
    print(f"latency p50 {r['p50'] * 1e3:.0f} ms   p99 {r['p99'] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
