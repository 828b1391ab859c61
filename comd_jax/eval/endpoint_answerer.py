"""An `Answerer` over an OpenAI-compatible endpoint: how a benchmark scores the teacher (our
server, vLLM, a hosted API) through the same evaluators the in-process student goes through.

Greedy (temperature 0) and at most `max_tokens` new tokens, as the student answers; every
request of a benchmark is in flight at once, up to the client's concurrency limit.
"""
from __future__ import annotations

import logging
from typing import Sequence

from comd_jax.data.templates import IMAGE_PLACEHOLDER
from comd_jax.eval.answerer import Request


def _image_bytes(image):
    """A path is sent as its file's bytes; bytes and uint8 arrays as they are (the client encodes them)."""
    if isinstance(image, str):
        with open(image, "rb") as f:
            return f.read()
    return image


def request_messages(request: Request) -> list:
    """OpenAI chat messages: every turn in order, the request's images with the first user turn
    (where LLaVA puts `<image>`), the placeholder itself left out."""
    from comd_jax.serve.client import user_message

    messages, images = [], [_image_bytes(im) for im in request.images]
    for role, text in request.messages:
        if role == "user":
            plain = text.replace(IMAGE_PLACEHOLDER, "").strip()
            messages.append(user_message(plain, images if not any(m["role"] == "user" for m in messages) else ()))
        else:
            messages.append({"role": "assistant", "content": text})
    return messages


class EndpointAnswerer:
    """`answer(requests)` through `client` (a `comd_jax.serve.client.ChatClient`)."""

    def __init__(self, client, *, max_tokens: int):
        self.client, self.max_tokens = client, max_tokens

    def answer(self, requests: Sequence[Request]) -> list[str]:
        if not requests:
            return []
        from comd_jax.serve.client import ItemSkipped

        replies = self.client.chat_many_sync([
            (request_messages(r), {"temperature": 0.0, "max_tokens": self.max_tokens}) for r in requests],
            skipped_ok=True)
        # A benchmark keeps every question: an unusable answer is an empty (wrong) one, logged.
        out = []
        for k, reply in enumerate(replies):
            if isinstance(reply, ItemSkipped):
                logging.warning("request %d of %d: the endpoint's answer is unusable (%s); scored as empty",
                                k + 1, len(replies), reply)
                out.append("")
            else:
                out.append(reply[0].text.strip())
        return out
