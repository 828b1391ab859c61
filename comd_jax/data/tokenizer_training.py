"""Train a small byte-level BPE tokenizer and save it as a transformers tokenizer.

Byte-level BPE decodes losslessly (generated text round-trips exactly) and
never needs <unk>. The saved folder loads with AutoTokenizer.from_pretrained
and carries a chat template rendered from one of our templates, so
`apply_chat_template` and our own rendering agree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from comd_jax.data.templates import IMAGE_PLACEHOLDER, ChatTemplate, get_template

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, IMAGE_PLACEHOLDER)  # ids 0..4, Llama-like 1/2 for bos/eos


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str,
    *,
    vocab_size: int = 1024,
    template: str | ChatTemplate = "vicuna_v1",
) -> str:
    """Trains on `texts`, writes a transformers tokenizer folder, returns its path."""
    from transformers import PreTrainedTokenizerFast  # Heavy import, needed only here.

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    # Like Llama: tokenizer(text) starts with <s>.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, tokenizer.token_to_id(BOS))],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE_PLACEHOLDER},
    )
    wrapped.chat_template = get_template(template).to_jinja()
    wrapped.save_pretrained(out_dir)
    _portable_class_name(out_dir)
    return out_dir


def _portable_class_name(out_dir: str) -> None:
    # transformers 5 records its backend class name, which transformers 4
    # cannot resolve; the classic name loads under both.
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
