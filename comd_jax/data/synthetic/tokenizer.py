"""The world's tokenizer: BPE trained on the world's conversations as the model sees them."""

from __future__ import annotations

from collections.abc import Iterator

from comd_jax.data import tokenizer_training
from comd_jax.data.conversation import parse_conversation
from comd_jax.data.synthetic import world
from comd_jax.data.templates import ASSISTANT, TEMPLATES, USER


def world_texts(spec: world.WorldSpec) -> Iterator[str]:
    """Captions rendered with `plain`, instructions with `vicuna_v1`, plus every
    other template's scaffolding once, so all templates tokenize sensibly."""
    for split, template in ((world.CAPTIONS, "plain"), (world.INSTRUCTIONS, "vicuna_v1")):
        for example in world.iterate_split(spec, split):
            parsed = parse_conversation(example.conversations, num_images=1)
            segments = TEMPLATES[template].render(parsed.messages, bos="", eos="")
            yield "".join(s.text for s in segments)
    for template in TEMPLATES.values():
        messages = [(USER, "question"), (ASSISTANT, "answer")] * (template.max_exchanges or 2)
        yield "".join(s.text for s in template.render(messages, bos="", eos=""))


def build_world_tokenizer(spec: world.WorldSpec, out_dir: str, *, vocab_size: int = 1024) -> str:
    return tokenizer_training.train_tokenizer(
        world_texts(spec), out_dir, vocab_size=vocab_size, template="vicuna_v1"
    )
