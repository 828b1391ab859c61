"""The instruction pool: entries with provenance, persisted as JSON Lines.

Appends are flushed line by line, so a crash loses at most the entries being
written; loading skips nothing silently (a torn last line is reported and
dropped, anything else malformed is an error naming file and line).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Iterator, Optional


@dataclasses.dataclass
class PoolEntry:
    id: str
    instruction: str  # the user turn, with "<image>" where the image goes
    target: str  # the answer the student trains on
    image: Optional[str] = None  # path (relative to the pool's image folder) or None
    skill: Optional[str] = None
    reference: Optional[str] = None  # ground truth, where the data has one
    provenance: dict = dataclasses.field(default_factory=dict)
    # Earlier turns of a multi-turn sample, as LLaVA writes them ({"from": "human"|"gpt", "value"}):
    # teacher, student and judge see them before `instruction`; "<image>" may sit in the first.
    context: list = dataclasses.field(default_factory=list)
    # provenance keys: round, seed_id (the hard instruction it grew from), answered_by
    # ("teacher" | "student"), scores ({"teacher": x, "student": y}), augmentor

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "PoolEntry":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown pool entry fields {sorted(unknown)}")
        return cls(**d)

    def turns(self) -> list:
        """(role, text) of the whole conversation up to the instruction; role "user" | "assistant"."""
        roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
        return [(roles[t["from"]], t["value"]) for t in self.context] + [("user", self.instruction)]

    def question(self) -> str:
        """What a judge reads as the question: earlier turns first, without image placeholders."""
        lines = [f"{'User' if role == 'user' else 'Assistant'}: {_plain(text)}" for role, text in self.turns()[:-1]]
        return "\n".join(lines + [("User: " if lines else "") + _plain(self.instruction)])

    def as_llava(self) -> dict:
        """The LLaVA JSON sample the trainer reads."""
        sample = {"id": self.id, "conversations": [*self.context, {"from": "human", "value": self.instruction},
                                                   {"from": "gpt", "value": self.target}]}
        if self.image is not None:
            sample["image"] = self.image
        return sample


def _plain(text: str) -> str:
    return text.replace("<image>", "").strip()


def chat_messages(entry: PoolEntry, images: list) -> list:
    """OpenAI chat messages for an endpoint: every turn, the images with the first user turn."""
    from comd_jax.serve.client import user_message

    messages = []
    for role, text in entry.turns():
        if role == "user":
            messages.append(user_message(_plain(text), images if not messages else ()))
        else:
            messages.append({"role": "assistant", "content": text})
    return messages


def append(path: str, entries: Iterable[PoolEntry]) -> int:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    count = 0
    with open(path, "a", encoding="utf-8") as f:
        for entry in entries:
            f.write(entry.to_json() + "\n")
            f.flush()
            count += 1
    return count


def load(path: str) -> list[PoolEntry]:
    return list(iter_entries(path))


def iter_entries(path: str) -> Iterator[PoolEntry]:
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield PoolEntry.from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            if number == len(lines) and not line.endswith("\n"):
                # The write in flight when the process died: drop it, it will be redone.
                print(f"{path}:{number}: dropping a torn last line ({e})")
                return
            raise ValueError(f"{path}:{number}: malformed pool entry: {e}") from None


def write_llava(path: str, entries: Iterable[PoolEntry]) -> int:
    """The pool as a LLaVA JSON file (the trainer's input), written atomically."""
    samples = [e.as_llava() for e in entries]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(samples, f)
    os.replace(tmp, path)
    return len(samples)
