"""What the distillation loop needs from a model endpoint (teacher, judge,
augmentor): chat completions. Our teacher server and any OpenAI-compatible
endpoint both satisfy it through `comd_jax.serve.client`; tests use fakes."""
from __future__ import annotations

import dataclasses
from typing import Optional, Protocol, Sequence


@dataclasses.dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str = "stop"  # "length" means the answer was cut at max_tokens


class ChatClient(Protocol):
    async def chat(self, messages: Sequence[dict], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                   max_tokens: int = 256, stop: Optional[Sequence[str]] = None,
                   seed: Optional[int] = None) -> list[Choice]:
        ...
