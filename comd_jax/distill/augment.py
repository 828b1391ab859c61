"""Augmentors: new instructions seeded by the hard ones, behind one interface.

- `LLMAugmentor` prompts the teacher as an instruction creator (same image,
  same task type, similar length and difficulty), filters what comes back, and
  leaves answering the survivors to the caller (the teacher, through the client).
- `ProceduralAugmentor` (the offline world) draws new scenes and questions of
  the seed's skill, with ground truth.

Filters (Lion / self-instruct): ROUGE-L F > 0.7 to anything already in the
pool or generated this round, too short, cut off at max_tokens, echoing the
prompt's own scaffolding, or an answer written where an instruction was asked
for. Each drop is counted by reason (`last_rejected`, then the round's report).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from typing import Optional, Protocol, Sequence

import numpy as np

from comd_jax.distill import rouge
from comd_jax.distill.pool import PoolEntry
from comd_jax.distill.protocol import ChatClient
from comd_jax.serve.client import ItemSkipped, user_message

CREATOR_TEMPLATE = """I want you to act as an Instruction Creator.
Your goal is to draw inspiration from the #Given Instruction# to create a brand new instruction.
The new instruction must be about the same image, belong to the same task type as the #Given Instruction#,
and have a similar length and difficulty. It must be answerable by looking at the image.
Write only the new instruction itself, nothing else.
#Given Instruction#:
{instruction}
#New Instruction#:"""

# Words of the creator prompt that must not leak into a new instruction.
ECHOES = ("#given instruction#", "#new instruction#", "given instruction", "new instruction",
          "instruction creator")


@dataclasses.dataclass
class Candidate:
    instruction: str
    seed: PoolEntry
    reference: Optional[str] = None  # procedural candidates carry ground truth and their target
    target: Optional[str] = None
    image: Optional[str] = None
    skill: Optional[str] = None


class Augmentor(Protocol):
    name: str
    text_novelty: bool  # True: drop candidates whose words repeat the pool's (ROUGE-L > 0.7)

    async def propose(self, seeds: Sequence[PoolEntry], round_index: int, images: dict) -> list:
        """Candidates grown from `seeds` (images: seed id → data URLs for the LLM path)."""
        ...


def clean(text: str) -> str:
    text = text.strip()
    text = re.sub(r"^#?\s*new instruction#?\s*:\s*", "", text, flags=re.I)
    return text.strip().strip('"').strip()


# How instructions begin: a question word, an auxiliary verb of a yes/no question, an imperative,
# or a framing phrase. A reply that asks nothing ("?") and begins otherwise is an answer.
INSTRUCTION_OPENERS = frozenset("""
what which who whom whose where when why how is are was were do does did can could would should will
shall may might has have had describe explain list identify name count compare tell write provide give
analyze analyse discuss summarize summarise determine estimate find point state classify select choose
answer read locate interpret evaluate assess examine observe infer predict propose recommend suggest
create imagine suppose consider considering based looking given using from according in on if please
pick match rank sort detail elaborate outline specify mention note look study share offer justify
""".split())
# How answers begin, when they begin like one: dropped even with a question mark later on.
ANSWER_OPENERS = ("the image shows", "the image depicts", "this image shows", "in the image, there",
                  "the answer is", "yes,", "no,", "yes.", "no.", "sure", "certainly", "here is", "here's")


def is_answer_not_instruction(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered.startswith(ANSWER_OPENERS):
        return True
    if "?" in lowered:
        return False
    first = re.sub(r"[^a-z]", "", lowered.split()[0]) if lowered.split() else ""
    return first not in INSTRUCTION_OPENERS


def reject_reason(text: str, finish_reason: str, min_words: int = 3) -> Optional[str]:
    if finish_reason == "length":
        return "truncated"
    if len(text.split()) < min_words:
        return "too_short"
    lowered = text.lower()
    if any(echo in lowered for echo in ECHOES):
        return "echoes_prompt"
    if is_answer_not_instruction(text):
        return "answer_not_instruction"
    return None


def strip_image_token(instruction: str) -> str:
    return instruction.replace("<image>\n", "").replace("<image>", "").strip()


@dataclasses.dataclass
class LLMAugmentor:
    client: ChatClient
    per_seed: int = 1
    max_tokens: int = 128
    temperature: float = 0.7
    name: str = "llm"
    # New text about the seed's image: a candidate is new only if its words are (ROUGE-L).
    text_novelty: bool = True
    concurrency: int = 8  # creator requests in flight at once (distill.concurrency)

    async def propose(self, seeds: Sequence[PoolEntry], round_index: int, images: dict) -> list:
        gate = asyncio.Semaphore(max(self.concurrency, 1))

        async def ask(k, seed):
            prompt = CREATOR_TEMPLATE.format(instruction=strip_image_token(seed.instruction))
            async with gate:
                try:
                    return await self.client.chat([user_message(prompt, images.get(seed.id, ()))], n=self.per_seed,
                                                  temperature=self.temperature, max_tokens=self.max_tokens,
                                                  seed=round_index * 1_000_003 + k)
                except ItemSkipped as e:  # this seed's request only
                    logging.warning("augmenting from %s: %s", seed.id, e)
                    return e

        # All at once; candidates are taken in seed order, so the result does not depend on timing.
        replies = await asyncio.gather(*(ask(k, seed) for k, seed in enumerate(seeds)))
        out, rejected = [], {}
        for seed, choices in zip(seeds, replies):
            if isinstance(choices, ItemSkipped):
                key = f"creator_{choices.reason}"
                rejected[key] = rejected.get(key, 0) + 1
                continue
            for choice in choices:
                text = clean(choice.text)
                reason = reject_reason(text, choice.finish_reason)
                if reason:
                    rejected[reason] = rejected.get(reason, 0) + 1
                    continue
                prefix = "<image>\n" if seed.image is not None else ""
                out.append(Candidate(prefix + text, seed, image=seed.image, skill=seed.skill))
        self.last_rejected = rejected
        return out


def filter_novel(candidates: Sequence[Candidate], pool_instructions: Sequence[str], limit: float = 0.7):
    """(kept, dropped count): ROUGE-L against the pool and against each other."""
    mask = rouge.novel([strip_image_token(c.instruction) for c in candidates],
                       [strip_image_token(s) for s in pool_instructions], limit)
    kept = [c for c, ok in zip(candidates, mask) if ok]
    return kept, len(candidates) - len(kept)


@dataclasses.dataclass
class ProceduralAugmentor:
    """New world examples of the seed's skill: fresh scenes, ground truth included.

    Indices are drawn from the round's generator, so the draw is a pure function
    of (seed, round) and a resumed round proposes the same candidates."""

    spec: object  # comd_jax.data.synthetic.world.WorldSpec
    image_root: str  # the pool's image folder; new images go to image_root/subdir
    per_seed: int = 1
    seed: int = 0
    name: str = "procedural"
    subdir: str = "aug"
    # A fresh scene each time: the world's templated questions repeat their words, but
    # about a new image they are a new instruction, so the ROUGE-L filter does not apply.
    text_novelty: bool = False

    async def propose(self, seeds: Sequence[PoolEntry], round_index: int, images: dict) -> list:
        import os

        from comd_jax.data.synthetic import world

        rng = np.random.default_rng([self.seed, round_index, 0xA06])
        os.makedirs(os.path.join(self.image_root, self.subdir), exist_ok=True)
        out = []
        for seed_entry in seeds:
            if seed_entry.skill not in world.SKILLS:
                continue
            spec = dataclasses.replace(self.spec, skills=(seed_entry.skill,))
            for _ in range(self.per_seed):
                index = int(rng.integers(0, 2**31 - 1))
                example = world.generate_example(spec, world.AUGMENT, index)
                name = f"{self.subdir}/r{round_index}_{seed_entry.skill}_{index}.png"
                with open(os.path.join(self.image_root, name), "wb") as f:
                    f.write(example.png)
                turns = example.conversations
                # Multi-turn examples contribute their first turn; its short answer leads `answer`.
                out.append(Candidate(turns[0]["value"], seed_entry, reference=example.answer.split(" | ")[0],
                                     target=turns[1]["value"], image=name, skill=example.skill))
        return out
