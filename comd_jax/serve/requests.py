"""What the engine takes and gives back, and the per-sequence bookkeeping that
decides when a sequence ends (EOS, max_tokens, stop strings)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from comd_jax.serve.sampling import SamplingParams


@dataclasses.dataclass(frozen=True)
class Request:
    prompt_ids: np.ndarray  # int32 [T], image placeholders already expanded
    pixels: Optional[np.ndarray] = None  # float32 [M, H, W, C] preprocessed images, in prompt order
    params: SamplingParams = SamplingParams()


@dataclasses.dataclass(frozen=True)
class Result:
    text: str
    token_ids: list
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (max_tokens)
    prompt_tokens: int
    logprobs: Optional[list] = None  # per generated token, when asked for
    # per generated token, with top_logprobs: [(token id, logprob)] * k, most likely first
    top_logprobs: Optional[list] = None
    # with prompt_logprobs: per prompt token, None for the first, then (its logprob, its rank,
    # [(token id, logprob)] * k most likely first) at its position (vLLM's prompt_logprobs)
    prompt_logprobs: Optional[list] = None
    # with logprobs, when EOS ended the sequence: (its id, logprob, [(token id, logprob)] * k); it is
    # not among token_ids (nor in the text), but closes the logprobs, as vLLM reports it
    end_logprob: Optional[tuple] = None
    # EOS ended the sequence: vLLM keeps it in its output tokens, so it counts in completion_tokens
    # (and toward max_tokens) though it is neither in token_ids nor in the text
    eos_ended: bool = False

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids) + int(self.eos_ended)


class Sequence:
    """One request in flight: its slot, generated tokens and stop checks."""

    def __init__(self, request: Request, slot: int, eos_ids: frozenset, tokenizer):
        self.request = request
        self.slot = slot
        self.eos_ids = eos_ids
        self.tokenizer = tokenizer
        self.tokens: list = []
        self.logprobs: list = []
        self.top_logprobs: list = []
        self.finish_reason: Optional[str] = None
        self.stop_text: Optional[str] = None
        self.prompt_scores: Optional[list] = None
        self.end: Optional[tuple] = None  # (EOS id, its logprob, its top) when EOS ended it and logprobs were asked
        self.eos_ended = False

    def score_prompt(self, scores: dict) -> None:
        """Keeps the prefill's scores of this prompt (`sampling.score_prompt`'s arrays, one row)."""
        k, n = self.params.prompt_logprobs, len(self.request.prompt_ids)
        out = [None]
        for t in range(n - 1):  # position t rates prompt token t + 1
            tops = [(int(i), float(v)) for i, v in zip(scores["top_ids"][t][:k], scores["top"][t][:k])]
            out.append((float(scores["logprob"][t]), int(scores["rank"][t]), tops))
        self.prompt_scores = out

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def next_position(self) -> int:
        """Where the last generated token gets fed (its KV slot)."""
        return len(self.request.prompt_ids) + len(self.tokens) - 1

    def extend(self, tokens, logprobs, tops=None) -> bool:
        """Take a chunk of tokens in order until the sequence ends; True when it has.
        `tops`: (top logprobs [n, K], their ids [n, K]) for the same tokens, or None."""
        k = self.params.top_logprobs
        for i, (token, logp) in enumerate(zip(tokens, logprobs)):
            if int(token) in self.eos_ids:
                self.finish_reason, self.eos_ended = "stop", True
                if self.params.logprobs:  # reported as vLLM does: the end token closes the logprobs
                    top = [(int(t), float(v)) for t, v in zip(tops[1][i][:k], tops[0][i][:k])] if k else []
                    self.end = (int(token), float(logp), top)
                break
            self.tokens.append(int(token))
            self.logprobs.append(float(logp))
            if k:
                values, ids = tops[0][i], tops[1][i]
                self.top_logprobs.append([(int(t), float(v)) for t, v in zip(ids[:k], values[:k])])
            if len(self.tokens) >= self.params.max_tokens:
                self.finish_reason = "length"
                break
        if self.params.stop and self._cut_at_stop():  # a stop string before the EOS ends it there
            self.finish_reason, self.end, self.eos_ended = "stop", None, False
        return self.finish_reason is not None

    def _cut_at_stop(self) -> bool:
        text = self._text(self.tokens)
        found = [i for i in (text.find(s) for s in self.params.stop) if i >= 0]
        if not found:
            return False
        self.stop_text = text[:min(found)]
        # Keep tokens up to the one that completed the stop string (for usage and logprobs).
        for n in range(1, len(self.tokens) + 1):
            if any(s in self._text(self.tokens[:n]) for s in self.params.stop):
                del self.tokens[n:], self.logprobs[n:], self.top_logprobs[n:]
                break
        return True

    def _text(self, tokens) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def result(self) -> Result:
        text = self.stop_text if self.stop_text is not None else self._text(self.tokens)
        return Result(text=text, token_ids=list(self.tokens), finish_reason=self.finish_reason or "length",
                      prompt_tokens=int(len(self.request.prompt_ids)),
                      logprobs=list(self.logprobs) if self.params.logprobs else None,
                      top_logprobs=list(self.top_logprobs) if self.params.top_logprobs else None,
                      prompt_logprobs=self.prompt_scores, end_logprob=self.end,
                      eos_ended=self.eos_ended)
