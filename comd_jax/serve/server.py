"""The OpenAI-compatible HTTP server (aiohttp) in front of one Engine.

Routes: POST /v1/chat/completions, GET /v1/models, GET /health. Every client
mistake is a 4xx with an OpenAI-shaped JSON error; an unexpected failure is a
500 for that request only, so the process never dies on input. The body size
limit is enforced by aiohttp before the body is read. On SIGINT/SIGTERM the
server stops accepting, lets in-flight requests finish (up to the timeout),
then shuts the engine down.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import json
import logging

from aiohttp import web

from comd_jax.serve import protocol
from comd_jax.serve.prompts import Prompter, RequestError

log = logging.getLogger(__name__)
ENGINE, PROMPTER, SETTINGS = web.AppKey("engine", object), web.AppKey("prompter", object), web.AppKey("settings", dict)


def _json_error(status: int, message: str, **kw) -> web.Response:
    kind = "authentication_error" if status == 401 else "invalid_request_error" if status < 500 else "server_error"
    return web.json_response(protocol.error(message, kind=kind, **kw), status=status)


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except RequestError as e:
        return _json_error(e.status, str(e), param=e.param, code=e.code)
    except web.HTTPRequestEntityTooLarge as e:
        return _json_error(413, f"request body too large ({e.text})")
    except web.HTTPException as e:  # 404/405 from routing
        return _json_error(e.status, e.reason)
    except Exception as e:  # never take the server down for one request
        log.exception("request failed")
        return _json_error(500, f"internal error: {type(e).__name__}: {e}")


def _auth(api_key):
    @web.middleware
    async def check(request: web.Request, handler):
        if api_key and request.path != "/health":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _json_error(401, "missing or wrong API key (Authorization: Bearer <key>)",
                                   code="invalid_api_key")
        return await handler(request)
    return check


async def _health(request):
    settings = request.app[SETTINGS]
    compiles = settings["compiles"]
    return web.json_response({"status": "ok", "warmed_up": settings["warmed"],
                              "compiles_since_start": None if compiles is None else compiles.count})


async def _models(request):
    name = request.app[SETTINGS]["model_name"]
    return web.json_response({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "comd_jax"}]})


async def _read_body(request) -> dict:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    return body


async def _chat(request):
    app = request.app
    settings, prompter, engine = app[SETTINGS], app[PROMPTER], app[ENGINE]
    body = await _read_body(request)
    model = body.get("model")
    if model != settings["model_name"]:
        raise RequestError(f"model {model!r} does not exist; this server serves {settings['model_name']!r}",
                           "model", status=404, code="model_not_found")
    params, n = protocol.sampling_params(body, prompter.limits)
    options = protocol.prompt_options(body)
    loop = asyncio.get_running_loop()
    # Decoding images and tokenizing run off the event loop.
    base = await loop.run_in_executor(None, functools.partial(
        prompter.request, body.get("messages"), params, continue_final=options.continue_final,
        generation_prompt=options.generation_prompt))
    requests = [dataclasses.replace(base, params=dataclasses.replace(params, seed=protocol.choice_seed(params.seed, i)))
                for i in range(n)]
    try:
        for r in requests:
            engine.check(r)
    except ValueError as e:
        raise RequestError(str(e), "max_tokens") from None
    results = await asyncio.gather(*(engine.generate(r) for r in requests))
    return web.json_response(protocol.completion(list(results), settings["model_name"], prompter.tokenizer,
                                                 base.prompt_ids, options))


def create_app(engine, prompter: Prompter, *, model_name: str, api_key=None, compiles=None,
               warmed: bool = False) -> web.Application:
    """`compiles`: a `warmup.CompileCounter` whose count /health reports (XLA compiles since the
    server started serving; 0 under any load after a warm-up)."""
    app = web.Application(client_max_size=prompter.limits.max_body_bytes, middlewares=[_errors, _auth(api_key)])
    app[ENGINE], app[PROMPTER] = engine, prompter
    app[SETTINGS] = {"model_name": model_name, "compiles": compiles, "warmed": warmed}
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/chat/completions", _chat)

    async def stop_engine(app):
        await asyncio.get_running_loop().run_in_executor(None, app[ENGINE].shutdown, 30.0)

    app.on_shutdown.append(stop_engine)
    return app


def run(app: web.Application, host: str = "127.0.0.1", port: int = 8000, shutdown_timeout: float = 30.0) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get `shutdown_timeout` seconds."""
    web.run_app(app, host=host, port=port, shutdown_timeout=shutdown_timeout, print=None, handle_signals=True)
