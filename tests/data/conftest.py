"""Shared fixtures: a word-level transformers tokenizer whose ids we know by heart,
tiny LLaVA datasets on disk, and a tiny synthetic world."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]  # ids 0..4
SYSTEM_WORDS = (
    "A chat between a curious user and an artificial intelligence assistant . The assistant "
    "gives helpful , detailed , and polite answers to the user ' s questions ."
).split()
WORDS = sorted(
    set(
        SYSTEM_WORDS + "USER ASSISTANT : ? . , ! What colour is the circle It red Is it big Yes No "
        "Describe image A square blue green How many There are two one".split()
        + [f"w{i}" for i in range(64)]
    )
)


def word_vocab() -> dict[str, int]:
    return {token: i for i, token in enumerate(SPECIALS + WORDS)}


def make_word_tokenizer(split_punctuation: bool = True):
    """Words and punctuation are tokens, spaces vanish; offsets point at the words."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(word_vocab(), unk_token="<unk>"))
    steps = [pre_tokenizers.WhitespaceSplit()]
    if split_punctuation:
        steps.append(pre_tokenizers.Punctuation())
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


@pytest.fixture(scope="session")
def word_tokenizer():
    return make_word_tokenizer()


@pytest.fixture(scope="session")
def word_tokenizer_dir(tmp_path_factory, word_tokenizer):
    path = str(tmp_path_factory.mktemp("word_tokenizer"))
    word_tokenizer.save_pretrained(path)
    return path


def png_bytes(colour=(200, 30, 30), size=(12, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_folder(folder: str) -> None:
    """good.png, a text file posing as an image, and a truncated PNG."""
    os.makedirs(folder, exist_ok=True)
    data = png_bytes()
    with open(os.path.join(folder, "good.png"), "wb") as f:
        f.write(data)
    with open(os.path.join(folder, "garbage.png"), "wb") as f:
        f.write(b"this is not an image")
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        big, format="PNG"
    )
    with open(os.path.join(folder, "truncated.png"), "wb") as f:
        f.write(big.getvalue()[: len(big.getvalue()) // 2])


def sample(
    sample_id, answer="It is red .", image="good.png", question="<image>\nWhat colour is it ?"
):
    turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    record = {"id": sample_id, "conversations": turns}
    if image is not None:
        record["image"] = image
    return record


# One sample per bad-input class (id -> (JSONL line, reason)). "LONG" is too
# long only for max_length < 40.
BAD_SAMPLES = {
    "missing": (json.dumps(sample("missing", image="nope.png")), "missing_image"),
    "garbage": (json.dumps(sample("garbage", image="garbage.png")), "unreadable_image"),
    "truncated": (json.dumps(sample("truncated", image="truncated.png")), "unreadable_image"),
    "badjson": ('{"id": "badjson", "conversations": [', "malformed_json"),
    "robot": (
        json.dumps(
            {
                "id": "robot",
                "image": "good.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nHi"},
                    {"from": "robot", "value": "Yes"},
                ],
            }
        ),
        "unknown_role",
    ),
    "twohumans": (
        json.dumps(
            {
                "id": "twohumans",
                "image": "good.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nHi"},
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Yes"},
                ],
            }
        ),
        "roles_not_alternating",
    ),
    "noanswer": (
        json.dumps(
            {
                "id": "noanswer",
                "image": "good.png",
                "conversations": [{"from": "human", "value": "<image>\nHi"}],
            }
        ),
        "no_assistant_turn",
    ),
    "twoplaceholders": (
        json.dumps(sample("twoplaceholders", question="<image>\n<image>\nWhat colour is it ?")),
        "too_many_placeholders",
    ),
    "long": (json.dumps(sample("long", answer=" ".join(["w1"] * 60))), "too_long"),
    "empty": (json.dumps(sample("empty", answer="  ")), "empty_labels"),
}


def write_jsonl(path: str, lines: list[str]) -> str:
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_world_spec():
    from comd_jax.data.synthetic import world

    return world.WorldSpec(seed=3, num_captions=24, num_instructions=90, num_heldout=18)


@pytest.fixture(scope="session")
def tiny_world_tfds(tmp_path_factory, tiny_world_spec):
    from comd_jax.data.synthetic import builder

    return builder.build(tiny_world_spec, str(tmp_path_factory.mktemp("world_tfds")))
