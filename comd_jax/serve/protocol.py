"""The OpenAI chat-completions wire format: request fields → SamplingParams,
engine Results → the response object. No HTTP here."""
from __future__ import annotations

import dataclasses
import time
import uuid

from comd_jax.serve.prompts import Limits, RequestError
from comd_jax.serve.sampling import SamplingParams

KNOWN_FIELDS = {"model", "messages", "n", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop",
                "seed", "logprobs", "top_logprobs", "stream", "user", "frequency_penalty", "presence_penalty",
                # vLLM's extensions, with its meanings
                "prompt_logprobs", "continue_final_message", "add_generation_prompt", "return_tokens_as_token_ids"}


def _flag(body, name, default):
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"'{name}' must be a boolean, got {value!r}", name)
    return value


@dataclasses.dataclass(frozen=True)
class PromptOptions:
    """How the messages become the prompt, and how tokens are named in the reply (vLLM's fields)."""
    continue_final: bool = False  # continue_final_message
    generation_prompt: bool = True  # add_generation_prompt
    token_ids: bool = False  # return_tokens_as_token_ids: tokens are "token_id:<id>"


def prompt_options(body: dict) -> PromptOptions:
    continue_final = _flag(body, "continue_final_message", False)
    generation_prompt = _flag(body, "add_generation_prompt", not continue_final)
    if continue_final and generation_prompt:
        raise RequestError("'continue_final_message' and 'add_generation_prompt' cannot both be true",
                           "add_generation_prompt")
    return PromptOptions(continue_final, generation_prompt, _flag(body, "return_tokens_as_token_ids", False))


def _number(body, name, default, lo, hi, integer=False):
    value = body.get(name, default)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise RequestError(f"'{name}' must be {'an integer' if integer else 'a number'}, got {value!r}", name)
    if not lo <= value <= hi:
        raise RequestError(f"'{name}' must be in [{lo}, {hi}], got {value}", name)
    return value


def sampling_params(body: dict, limits: Limits) -> tuple:
    """(SamplingParams, n) from a request body; raises RequestError."""
    if body.get("stream"):
        raise RequestError("streaming is not supported; leave 'stream' unset or false", "stream")
    for name in ("frequency_penalty", "presence_penalty"):
        if _number(body, name, 0, -2, 2) != 0:
            raise RequestError(f"'{name}' is not supported (only 0)", name)
    n = _number(body, "n", 1, 1, limits.max_n, integer=True)
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, name, min(64, limits.max_output_tokens), 1, limits.max_output_tokens, integer=True)
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > limits.max_stop or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(f"'stop' must be a non-empty string or a list of at most {limits.max_stop} of them", "stop")
    logprobs = body.get("logprobs", False)
    if logprobs is not None and not isinstance(logprobs, bool):
        raise RequestError("'logprobs' must be a boolean", "logprobs")
    top_logprobs = _number(body, "top_logprobs", 0, 0, limits.max_top_logprobs, integer=True)
    if top_logprobs and not logprobs:
        raise RequestError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    prompt_logprobs = body.get("prompt_logprobs")
    if prompt_logprobs is not None:
        prompt_logprobs = _number(body, "prompt_logprobs", None, 0, limits.max_top_logprobs, integer=True)
    params = SamplingParams(
        max_tokens=max_tokens, temperature=float(_number(body, "temperature", 1.0, 0.0, 2.0)),
        top_p=float(_number(body, "top_p", 1.0, 1e-6, 1.0)),
        seed=_number(body, "seed", None, -2 ** 63, 2 ** 63 - 1, integer=True), stop=tuple(stop),
        logprobs=bool(logprobs), top_logprobs=top_logprobs, prompt_logprobs=prompt_logprobs)
    return params, n


def choice_seed(seed, index: int):
    """Choice i of a seeded request uses seed + i: n samples differ, reruns repeat."""
    return None if seed is None else (seed + index) % 2 ** 31


def _namer(tokenizer, token_ids: bool):
    if token_ids:
        return lambda token_id: f"token_id:{token_id}"
    return lambda token_id: tokenizer.decode([token_id])


def _logprobs(result, tokenizer, token_ids: bool = False):
    if result.logprobs is None:
        return None
    name = _namer(tokenizer, token_ids)

    def entry(token_id, logp):
        token = name(token_id)
        return {"token": token, "logprob": logp, "bytes": list(token.encode("utf-8"))}

    tops = result.top_logprobs or [[] for _ in result.token_ids]
    rows = list(zip(result.token_ids, result.logprobs, tops))
    if result.end_logprob is not None:
        rows.append(result.end_logprob)
    return {"content": [{**entry(t, logp), "top_logprobs": [entry(i, v) for i, v in top]} for t, logp, top in rows]}


def prompt_logprobs(result, prompt_ids, tokenizer, token_ids: bool = False):
    """vLLM's `prompt_logprobs`: per prompt token, None for the first, then {token id (a string,
    as JSON keys are): {"logprob", "rank", "decoded_token"}} holding the k most likely tokens at
    its position and the prompt's own token (so up to k + 1 entries)."""
    if result.prompt_logprobs is None:
        return None
    name = _namer(tokenizer, token_ids)
    out = [None]
    for token, scored in zip(prompt_ids[1:], result.prompt_logprobs[1:]):
        logp, rank, tops = scored
        entries = {str(i): {"logprob": v, "rank": r, "decoded_token": name(i)} for r, (i, v) in enumerate(tops, 1)}
        entries.setdefault(str(int(token)), {"logprob": logp, "rank": rank, "decoded_token": name(int(token))})
        out.append(entries)
    return out


def completion(results: list, model: str, tokenizer, prompt_ids=None, options: PromptOptions = PromptOptions()) \
        -> dict:
    prompt_tokens = results[0].prompt_tokens if results else 0
    completion_tokens = sum(r.completion_tokens for r in results)
    scored = prompt_logprobs(results[0], prompt_ids, tokenizer, options.token_ids) \
        if results and prompt_ids is not None else None
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": r.text},
                     "finish_reason": r.finish_reason, "logprobs": _logprobs(r, tokenizer, options.token_ids)}
                    for i, r in enumerate(results)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        **({"prompt_logprobs": scored} if scored is not None else {}),
    }


def error(message: str, *, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
