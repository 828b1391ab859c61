"""Augmentors: new instructions seeded by the hard ones, behind one interface.

- `LLMAugmentor` prompts the teacher as an instruction creator (same image,
  same task type, similar length and difficulty), filters what comes back, and
  leaves answering the survivors to the caller (the teacher, through the client).
- `ProceduralAugmentor` (the offline world) draws new scenes and questions of
  the seed's skill, with ground truth.

Filters (Lion / self-instruct): ROUGE-L F > 0.7 to anything already in the
pool or generated this round, too short, cut off at max_tokens, or echoing
the prompt's own scaffolding.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional, Protocol, Sequence

import numpy as np

from comd_jax.distill.pool import PoolEntry
from comd_jax.distill.protocol import ChatClient
from comd_jax.serve.client import user_message

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


class RougeFilter:
    """Keeps instructions whose ROUGE-L to everything seen so far is at most `limit`."""

    def __init__(self, existing: Sequence[str], limit: float = 0.7):
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.limit = limit
        self.seen = [s for s in existing if s]

    def admit(self, text: str) -> bool:
        for other in self.seen:
            if self.scorer.score(other, text)["rougeL"].fmeasure > self.limit:
                return False
        self.seen.append(text)
        return True


def clean(text: str) -> str:
    text = text.strip()
    text = re.sub(r"^#?\s*new instruction#?\s*:\s*", "", text, flags=re.I)
    return text.strip().strip('"').strip()


def reject_reason(text: str, finish_reason: str, min_words: int = 3) -> Optional[str]:
    if finish_reason == "length":
        return "truncated"
    if len(text.split()) < min_words:
        return "too_short"
    lowered = text.lower()
    if any(echo in lowered for echo in ECHOES):
        return "echoes_prompt"
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

    async def propose(self, seeds: Sequence[PoolEntry], round_index: int, images: dict) -> list:
        out, rejected = [], {}
        for k, seed in enumerate(seeds):
            prompt = CREATOR_TEMPLATE.format(instruction=strip_image_token(seed.instruction))
            choices = await self.client.chat([user_message(prompt, images.get(seed.id, ()))], n=self.per_seed,
                                             temperature=self.temperature, max_tokens=self.max_tokens,
                                             seed=round_index * 1_000_003 + k)
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
    rouge = RougeFilter([strip_image_token(s) for s in pool_instructions], limit)
    kept = [c for c in candidates if rouge.admit(strip_image_token(c.instruction))]
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
