"""LLaVA-style turns -> validated (role, content) messages.

LLaVA data says `{"from": "human"|"gpt", "value": ...}`; chat data says
`{"role": "user"|"assistant", "content": ...}`. Both are accepted. A leading
system turn replaces the template's system text. Anything the templates
cannot render faithfully is refused with a named reason rather than being
repaired silently (LLaVA drops a leading non-human turn without a word).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from comd_jax.data import errors
from comd_jax.data.templates import ASSISTANT, IMAGE_PLACEHOLDER, SYSTEM, USER, Message

ROLE_ALIASES = {
    "human": USER,
    "user": USER,
    "gpt": ASSISTANT,
    "assistant": ASSISTANT,
    "system": SYSTEM,
}


@dataclasses.dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    system: str | None  # None: use the template's default
    num_placeholders: int


def parse_conversation(turns: object, *, num_images: int) -> Conversation:
    """Validates raw turns; raises errors.SampleError with the reason."""
    if not isinstance(turns, Sequence) or isinstance(turns, (str, bytes)) or not turns:
        raise errors.SampleError(
            errors.MALFORMED_SAMPLE, "'conversations' must be a non-empty list of turns"
        )
    pairs = [_role_and_text(i, turn) for i, turn in enumerate(turns)]
    system = None
    if pairs[0][0] == SYSTEM:
        system = pairs.pop(0)[1]
    for i, (role, _) in enumerate(pairs):
        expected = USER if i % 2 == 0 else ASSISTANT
        if role != expected:
            raise errors.SampleError(
                errors.ROLES_NOT_ALTERNATING, f"turn {i} is {role!r}, expected {expected!r}"
            )
    if not any(role == ASSISTANT for role, _ in pairs):
        raise errors.SampleError(errors.NO_ASSISTANT_TURN, "no assistant turn to learn from")
    if pairs[-1][0] != ASSISTANT:
        raise errors.SampleError(
            errors.ROLES_NOT_ALTERNATING, "the conversation ends with an unanswered user turn"
        )
    for i, (role, text) in enumerate(pairs):
        if role == ASSISTANT and not text.strip():
            raise errors.SampleError(errors.EMPTY_LABELS, f"assistant turn {i} is empty")
        if role == ASSISTANT and IMAGE_PLACEHOLDER in text:
            raise errors.SampleError(
                errors.TOO_MANY_PLACEHOLDERS, f"assistant turn {i} contains {IMAGE_PLACEHOLDER}"
            )
    num_placeholders = sum(text.count(IMAGE_PLACEHOLDER) for _, text in pairs)
    if num_placeholders > num_images:
        raise errors.SampleError(
            errors.TOO_MANY_PLACEHOLDERS,
            f"{num_placeholders} {IMAGE_PLACEHOLDER} placeholders " f"for {num_images} image(s)",
        )
    if num_placeholders < num_images:
        raise errors.SampleError(
            errors.MISSING_PLACEHOLDER,
            f"{num_images} image(s) but only {num_placeholders} "
            f"{IMAGE_PLACEHOLDER} placeholder(s)",
        )
    return Conversation(tuple(pairs), system, num_placeholders)


def _role_and_text(index: int, turn: object) -> tuple[str, str]:
    if not isinstance(turn, Mapping):
        raise errors.SampleError(errors.MALFORMED_SAMPLE, f"turn {index} is not an object")
    role = turn.get("from", turn.get("role"))
    text = turn.get("value", turn.get("content"))
    if not isinstance(role, str) or not isinstance(text, str):
        raise errors.SampleError(
            errors.MALFORMED_SAMPLE, f"turn {index} needs string 'from' and 'value'"
        )
    if role not in ROLE_ALIASES:
        raise errors.SampleError(
            errors.UNKNOWN_ROLE, f"turn {index} has role {role!r}; known: {sorted(ROLE_ALIASES)}"
        )
    return ROLE_ALIASES[role], text
