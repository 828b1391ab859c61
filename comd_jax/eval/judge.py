"""Pairwise judging: the prompt, the score parser, and the client protocol.

The judge sees a question (plus a text context, since judges may not see
images), two answers, and returns a first line with two 1-10 scores and then
an explanation, as LLaVA-Bench's GPT-4 review does. Any OpenAI-compatible
`/v1/chat/completions` endpoint serves as judge (`OpenAIJudge`, stdlib HTTP
only); tests and other transports implement `JudgeClient`.
"""
from __future__ import annotations

import json
import re
import urllib.request
from typing import Optional, Protocol, Sequence

SYSTEM = "You are a careful, impartial reviewer of answers given by AI assistants."
INSTRUCTION = (
    "The user asked the question above about an image, which is described to you in the context. "
    "Two AI assistants answered it. Rate each answer for helpfulness, relevance, accuracy and level "
    "of detail with one overall score from 1 to 10, where higher is better.\n"
    "On the first line, write only the two scores, Assistant 1's then Assistant 2's, separated by a space.\n"
    "From the next line on, explain your rating. Do not let the order in which the answers appear, "
    "or their length alone, sway your judgment.")


def judge_messages(question: str, answer_1: str, answer_2: str, context: str = "") -> list[dict]:
    content = (f"[Context]\n{context}\n\n[Question]\n{question}\n\n"
               f"[Assistant 1]\n{answer_1}\n\n[End of Assistant 1]\n\n"
               f"[Assistant 2]\n{answer_2}\n\n[End of Assistant 2]\n\n[System]\n{INSTRUCTION}\n")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


_NUMBER = r"(10(?:\.0+)?|[1-9](?:\.\d+)?)"
_PAIR = re.compile(rf"^\s*\**\s*{_NUMBER}\s*(?:,|\s|/|and)\s*{_NUMBER}\s*\**\s*$")
_LABELLED = re.compile(rf"assistant\s*([12])\D{{0,12}}?{_NUMBER}\b", re.IGNORECASE)


def parse_scores(text: str) -> Optional[tuple[float, float]]:
    """(score of assistant 1, score of assistant 2), each in 1..10, or None.

    Accepts the asked-for first line ("8 6", "8, 6", "8/6") or, failing that,
    two labelled lines ("Assistant 1: 8", "Assistant 2: 6").
    """
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if lines:
        match = _PAIR.match(lines[0])
        if match:
            return float(match.group(1)), float(match.group(2))
    labelled = {}
    for which, value in _LABELLED.findall(text):
        labelled.setdefault(which, float(value))
    if set(labelled) == {"1", "2"}:
        return labelled["1"], labelled["2"]
    return None


class JudgeClient(Protocol):
    def complete(self, messages: Sequence[dict]) -> str:
        """The judge's reply text to a chat (OpenAI message dicts)."""


class OpenAIJudge:
    """A chat-completions endpoint: ours (comd_jax.serve), vLLM, OpenAI, ..."""

    def __init__(self, base_url: str, model: str, *, api_key: str = "", temperature: float = 0.2,
                 max_tokens: int = 1024, timeout: float = 120.0):
        self.url = base_url.rstrip("/") + ("" if base_url.rstrip("/").endswith("/v1") else "/v1")
        self.url += "/chat/completions"
        self.model, self.api_key = model, api_key
        self.temperature, self.max_tokens, self.timeout = temperature, max_tokens, timeout

    def complete(self, messages: Sequence[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": list(messages), "temperature": self.temperature,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            reply = json.loads(response.read())
        return reply["choices"][0]["message"]["content"] or ""
