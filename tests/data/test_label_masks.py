"""Label masks against token sequences written out by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import SYSTEM_WORDS, make_word_tokenizer, word_vocab

from comd_jax.data import errors
from comd_jax.data.conversation import parse_conversation
from comd_jax.data.templates import TEMPLATES, ChatTemplate, get_template
from comd_jax.data.tokenize import tokenize_conversation

IMG = "<image>"


def turns(*pairs):
    out = []
    for question, answer in pairs:
        out += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return out


def expected(pieces, num_image_tokens):
    """pieces: list of (space-separated tokens, trained). Returns ids, mask."""
    vocab = word_vocab()
    ids, mask = [], []
    for words, trained in pieces:
        for w in words.split():
            copies = num_image_tokens if w == IMG else 1
            ids += [vocab[w]] * copies
            mask += [trained] * copies
    return np.array(ids, np.int32), np.array(mask, bool)


def run(template, conversation, num_image_tokens=3, tokenizer=None, num_images=1, **kw):
    parsed = parse_conversation(conversation, num_images=num_images)
    return tokenize_conversation(
        parsed.messages,
        template=get_template(template),
        tokenizer=tokenizer or make_word_tokenizer(),
        num_image_tokens=num_image_tokens,
        system=parsed.system,
        **kw,
    )


def test_vicuna_v1_multi_turn_mask_by_hand():
    conv = turns(
        ("<image>\nWhat colour is the circle?", "It is red."),
        ("Is it big?", "Yes."),
    )
    out = run("vicuna_v1", conv)
    system = " ".join(SYSTEM_WORDS)
    ids, mask = expected(
        [
            (f"<s> {system} USER : <image> What colour is the circle ? ASSISTANT :", False),
            ("It is red . </s>", True),
            ("USER : Is it big ? ASSISTANT :", False),
            ("Yes . </s>", True),
        ],
        num_image_tokens=3,
    )
    np.testing.assert_array_equal(out.input_ids, ids)
    np.testing.assert_array_equal(out.loss_mask, mask)
    assert out.text == (
        "<s>" + TEMPLATES["vicuna_v1"].system + " USER: <image>\nWhat colour is the circle? "
        "ASSISTANT: It is red.</s>USER: Is it big? ASSISTANT: Yes.</s>"
    )


def test_vicuna_v1_system_turn_replaces_default():
    conv = [{"from": "system", "value": "Describe it."}] + turns(("<image>\nHow many?", "two"))
    out = run("vicuna_v1", conv, num_image_tokens=2)
    ids, mask = expected(
        [
            ("<s> Describe it . USER : <image> How many ? ASSISTANT :", False),
            ("two </s>", True),
        ],
        num_image_tokens=2,
    )
    np.testing.assert_array_equal(out.input_ids, ids)
    np.testing.assert_array_equal(out.loss_mask, mask)


def test_plain_keeps_only_image_and_caption():
    out = run("plain", turns(("<image>\nDescribe the image.", "A red circle.")), num_image_tokens=4)
    ids, mask = expected(
        [("<s> <image>", False), ("A red circle . </s>", True)], num_image_tokens=4
    )
    np.testing.assert_array_equal(out.input_ids, ids)
    np.testing.assert_array_equal(out.loss_mask, mask)


def test_plain_refuses_multi_turn():
    with pytest.raises(ValueError, match="at most 1 exchange"):
        run("plain", turns(("<image>\nA", "B"), ("C", "D")))


def test_text_only_sample_has_no_image_tokens():
    out = run("vicuna_v1", turns(("How many?", "two")), num_images=0)
    assert word_vocab()[IMG] not in out.input_ids.tolist()
    assert out.loss_mask.sum() == 2  # "two" and "</s>"


def test_llama_2_and_chatml_render_exactly():
    messages = [("user", "<image>\nQ1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")]
    llama = "".join(
        s.text for s in TEMPLATES["llama_2"].render(messages, bos="<s>", eos="</s>", system="S")
    )
    assert (
        llama
        == "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\n<image>\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST] A2 </s>"
    )
    chatml = TEMPLATES["chatml"].render(messages, system="S")
    assert "".join(s.text for s in chatml) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n<image>\nQ1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"
        "<|im_start|>assistant\nA2<|im_end|>\n"
    )
    assert [s.text for s in chatml if s.trained] == ["A1<|im_end|>", "A2<|im_end|>"]
    assert (
        TEMPLATES["vicuna_v1"].render_prompt([("user", "Q")], system="S") == "S USER: Q ASSISTANT:"
    )


def test_new_template_is_a_few_lines():
    zephyr = ChatTemplate(
        name="zephyr",
        first_user_format="<|user|>\n{content}{eos}\n",
        user_format="<|user|>\n{content}{eos}\n",
        assistant_prefix="<|assistant|>\n",
        assistant_after="\n",
    )
    segments = zephyr.render([("user", "Q"), ("assistant", "A")], eos="</s>")
    assert [(s.text, s.trained) for s in segments] == [
        ("<|user|>\nQ</s>\n", False),
        ("<|assistant|>\n", False),
        ("A</s>", True),
        ("\n", False),
    ]


def test_token_straddling_answer_boundary_is_a_mismatch():
    # "ASSISTANT:" glued to the answer (no space) and a tokenizer that does not
    # split punctuation: one token covers prompt and answer (LLaVA #1166 class).
    glued = dataclasses.replace(TEMPLATES["vicuna_v1"], assistant_prefix="ASSISTANT:")
    tokenizer = make_word_tokenizer(split_punctuation=False)
    with pytest.raises(errors.SampleError) as info:
        run(glued, turns(("<image>\nHi", "Yes")), tokenizer=tokenizer)
    assert info.value.reason == errors.TOKENIZATION_MISMATCH
    assert "straddles answer 0" in info.value.detail


def test_answer_tokens_not_covering_answer_is_a_mismatch():
    # A normalizer that deletes characters makes tokens stop spelling the answer.
    from tokenizers import normalizers

    tokenizer = make_word_tokenizer()
    tokenizer.backend_tokenizer.normalizer = normalizers.Replace("!", "")
    with pytest.raises(errors.SampleError) as info:
        run("vicuna_v1", turns(("<image>\nHi", "Yes !")), tokenizer=tokenizer)
    assert info.value.reason == errors.TOKENIZATION_MISMATCH


def test_image_placeholder_not_a_single_token_is_a_mismatch():
    # <image> in the vocabulary but not special: the pre-tokenizer splits it.
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = word_vocab()
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    with pytest.raises(errors.SampleError) as info:
        run("vicuna_v1", turns(("<image>\nHi", "Yes")), tokenizer=tokenizer)
    assert info.value.reason == errors.TOKENIZATION_MISMATCH
    assert "image token" in info.value.detail


def test_too_long_and_empty_labels():
    with pytest.raises(errors.SampleError) as info:
        run("plain", turns(("<image>", "A red circle.")), num_image_tokens=10, max_length=12)
    assert info.value.reason == errors.TOO_LONG
    with pytest.raises(errors.SampleError) as info:
        run("vicuna_v1", turns(("<image>\nHi", " ")))
    assert info.value.reason == errors.EMPTY_LABELS


def test_hf_assistant_mask_agrees_with_ours(tmp_path):
    """Cross-check with transformers' own {% generation %} masking on a BPE tokenizer."""
    from transformers import AutoTokenizer

    from comd_jax.data.tokenizer_training import train_tokenizer

    texts = ["What colour is the circle? It is red. Is it big? Yes, it is big."] * 20
    path = train_tokenizer(texts, str(tmp_path / "bpe"), vocab_size=300)
    tokenizer = AutoTokenizer.from_pretrained(path)
    conv = turns(
        ("<image>\nWhat colour is the circle?", "It is red."), ("Is it big?", "Yes, it is big.")
    )
    ours = run("vicuna_v1", conv, tokenizer=tokenizer, num_image_tokens=1)
    messages = [
        {"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
        for t in conv
    ]
    theirs = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False) == ours.text
    np.testing.assert_array_equal(ours.input_ids, theirs["input_ids"])
    np.testing.assert_array_equal(ours.loss_mask, np.array(theirs["assistant_masks"], bool))
    assert tokenizer.decode(ours.input_ids[ours.loss_mask]) == " It is red.</s> Yes, it is big.</s>"
