"""Conversation templates: how (role, text) turns become one training string.

A template renders a conversation into `Segment`s; the segments flagged
`trained` are exactly the assistant answers plus their end token, which is
what the loss may see. Tokenization (tokenize.py) maps those character spans
onto tokens, so the template never has to guess token counts the way LLaVA's
per-round length arithmetic does (the source of "tokenization mismatch").

Format strings may use `{content}`, `{system}`, `{bos}` and `{eos}`; the last
two are filled from the tokenizer's own special tokens. To add a template,
add one `ChatTemplate(...)` entry to `TEMPLATES`.
"""

from __future__ import annotations

import dataclasses
import string
import types
from collections.abc import Sequence

IMAGE_PLACEHOLDER = "<image>"
USER, ASSISTANT, SYSTEM = "user", "assistant", "system"

# (role, content) with role in {USER, ASSISTANT}; conversation.py builds these.
Message = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class Segment:
    text: str
    trained: bool = False


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A conversation format, declared by its literal pieces."""

    name: str
    system: str = ""  # default system text; a conversation's own system turn overrides it
    prefix: str = ""  # once at the very start, e.g. "{bos}"
    system_format: str = "{system}"  # fills {system} below; skipped when the system text is empty
    first_user_format: str = "{system}{content}"  # the first user turn
    user_format: str = "{content}"  # later user turns
    assistant_prefix: str = ""  # untrained, before each answer
    assistant_end: str = "{eos}"  # trained, right after each answer
    assistant_after: str = ""  # untrained, after the end token
    # Text that ends a prompt for generation; by default the assistant prefix
    # without trailing spaces (LLaVA prompts end in "ASSISTANT:").
    generation_prefix: str | None = None
    # Stage-1 captions: the user's words are dropped, only image placeholders stay.
    image_only_user: bool = False
    max_exchanges: int | None = None

    def render(
        self,
        messages: Sequence[Message],
        *,
        bos: str = "",
        eos: str = "",
        system: str | None = None,
    ) -> list[Segment]:
        """Renders a validated conversation (user/assistant alternating, user first)."""
        if self.max_exchanges is not None and len(messages) > 2 * self.max_exchanges:
            raise ValueError(
                f"template {self.name!r} takes at most "
                f"{self.max_exchanges} exchange(s), got {len(messages) // 2}"
            )
        fill = _Filler(bos=bos, eos=eos, system=self._system_block(system, bos, eos))
        segments = [Segment(fill(self.prefix))]
        for turn, (role, content) in enumerate(messages):
            if role == USER:
                if self.image_only_user:
                    content = IMAGE_PLACEHOLDER * content.count(IMAGE_PLACEHOLDER)
                fmt = self.first_user_format if turn == 0 else self.user_format
                segments.append(Segment(fill(fmt, content=content)))
            else:
                segments.append(Segment(fill(self.assistant_prefix)))
                segments.append(Segment(content + fill(self.assistant_end), trained=True))
                segments.append(Segment(fill(self.assistant_after)))
        return [s for s in segments if s.text]

    def render_prompt(
        self,
        messages: Sequence[Message],
        *,
        bos: str = "",
        eos: str = "",
        system: str | None = None,
    ) -> str:
        """The text a model continues to answer the last user turn."""
        if not messages or messages[-1][0] != USER:
            raise ValueError("a generation prompt ends with a user turn")
        text = "".join(s.text for s in self.render(messages, bos=bos, eos=eos, system=system))
        generation_prefix = self.generation_prefix
        if generation_prefix is None:
            generation_prefix = self.assistant_prefix.rstrip(" ")
        return text + _Filler(bos=bos, eos=eos, system="")(generation_prefix)

    def render_continuation(self, messages: Sequence[Message], **special: str | None) -> str:
        """The conversation up to the last answer's final character, without its end token: the text
        whose tokens, then the end token, are what training on these messages predicts (scoring a
        given answer; vLLM's `continue_final_message`). `special`: render's bos, eos and system."""
        if not messages or messages[-1][0] != ASSISTANT:
            raise ValueError("a continuation ends with an assistant turn")
        *before, (_, answer) = messages
        head = "".join(s.text for s in self.render(before, **special))
        fill = _Filler(bos=special.get("bos") or "", eos=special.get("eos") or "", system="")
        return head + fill(self.assistant_prefix) + answer

    def _system_block(self, system: str | None, bos: str, eos: str) -> str:
        text = self.system if system is None else system
        if not text:
            return ""
        return _Filler(bos=bos, eos=eos, system=text)(self.system_format)

    def to_jinja(self) -> str:
        """This template as a transformers chat template (`tokenizer.chat_template`).

        Answers sit in `{% generation %}` blocks so that
        `apply_chat_template(..., return_assistant_tokens_mask=True)` marks the
        same tokens as `tokenize.tokenize_conversation`.
        """
        return _JinjaWriter(self).write()


class _Filler:
    """str.format with the template's fixed fields; content is never parsed."""

    def __init__(self, **fields: str):
        self._fields = fields

    def __call__(self, fmt: str, content: str = "") -> str:
        return fmt.format(content=content, **self._fields)


class _JinjaWriter:
    """Turns the template's format strings into one Jinja chat template."""

    _FIELDS = {
        "bos": "bos_token",
        "eos": "eos_token",
        "system": "system_block",
        "content": "content",
    }

    def __init__(self, template: ChatTemplate):
        self.t = template

    def _expr(self, fmt: str, **overrides: str) -> str:
        fields = {**self._FIELDS, **overrides}
        parts = []
        for literal, field, _, _ in string.Formatter().parse(fmt):
            if literal:
                parts.append(repr(literal))
            if field is not None:
                parts.append(fields[field])
        return " + ".join(parts) if parts else "''"

    def write(self) -> str:
        t = self.t
        system_block = self._expr(t.system_format, system="ns.system")
        if t.image_only_user:
            content = f"{IMAGE_PLACEHOLDER!r} * message['content'].count({IMAGE_PLACEHOLDER!r})"
            from_parts = "ns.images"
        else:
            content = "message['content']"
            from_parts = "ns.images + ns.text"
        # OpenAI-style content parts, as servers (transformers serve, vLLM) pass them: each image
        # part is a placeholder line before the text, as LLaVA writes "<image>\n" + question.
        image_part = IMAGE_PLACEHOLDER if t.image_only_user else IMAGE_PLACEHOLDER + "\n"
        parts = (
            "{%- set ns.images = '' -%}{%- set ns.text = '' -%}"
            "{%- for part in message['content'] -%}"
            "{%- if part['type'] in ('image', 'image_url', 'input_image') -%}"
            f"{{%- set ns.images = ns.images + {image_part!r} -%}}"
            "{%- elif part['type'] == 'text' -%}{%- set ns.text = ns.text + part['text'] -%}{%- endif -%}"
            "{%- endfor -%}"
        )
        generation_prefix = t.generation_prefix
        if generation_prefix is None:
            generation_prefix = t.assistant_prefix.rstrip(" ")
        return (
            "{%- set ns = namespace(system=" + repr(t.system) + ", images='', text='') -%}\n"
            "{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- if messages[0]['content'] is string -%}{%- set ns.system = messages[0]['content'] -%}"
            "{%- else -%}{%- set ns.system = messages[0]['content'] | selectattr('type', 'equalto', 'text') "
            "| map(attribute='text') | join('') -%}{%- endif -%}"
            "{%- set loop_messages = messages[1:] -%}"
            "{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}\n"
            "{%- if ns.system -%}{%- set system_block = " + system_block + " -%}"
            "{%- else -%}{%- set system_block = '' -%}{%- endif -%}\n"
            "{{- " + self._expr(t.prefix) + " -}}\n"
            "{%- for message in loop_messages -%}\n"
            "{%- if message['content'] is string -%}{%- set content = " + content + " -%}"
            "{%- else -%}" + parts + "{%- set content = " + from_parts + " -%}{%- endif -%}\n"
            "{%- if message['role'] == 'user' and loop.first -%}"
            "{{- " + self._expr(t.first_user_format) + " -}}\n"
            "{%- elif message['role'] == 'user' -%}"
            "{{- " + self._expr(t.user_format) + " -}}\n"
            "{%- else -%}{{- " + self._expr(t.assistant_prefix) + " -}}"
            "{%- generation -%}{{- content + " + self._expr(t.assistant_end) + " -}}"
            "{%- endgeneration -%}{{- " + self._expr(t.assistant_after) + " -}}\n"
            "{%- endif -%}\n"
            "{%- endfor -%}\n"
            "{%- if add_generation_prompt -%}{{- " + self._expr(generation_prefix) + " -}}"
            "{%- endif -%}\n"
        )


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's "
    "questions."
)
LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to "
    "understand the visual content that the user provides, and assist the "
    "user with a variety of tasks using natural language."
)

TEMPLATES: types.MappingProxyType[str, ChatTemplate] = types.MappingProxyType(
    {
        # Stage 1 (LLaVA "plain"): image placeholders, then the caption and eos.
        "plain": ChatTemplate(
            name="plain",
            prefix="{bos}",
            first_user_format="{content}",
            image_only_user=True,
            max_exchanges=1,
        ),
        # LLaVA-1.5: "SYS USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>".
        "vicuna_v1": ChatTemplate(
            name="vicuna_v1",
            system=VICUNA_SYSTEM,
            prefix="{bos}",
            system_format="{system} ",
            first_user_format="{system}USER: {content} ",
            user_format="USER: {content} ",
            assistant_prefix="ASSISTANT: ",
        ),
        # LLaVA's llama_2: "[INST] <<SYS>>\nS\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST] A2 </s>".
        "llama_2": ChatTemplate(
            name="llama_2",
            system=LLAMA_2_SYSTEM,
            prefix="{bos}",
            system_format="<<SYS>>\n{system}\n<</SYS>>\n\n",
            first_user_format="[INST] {system}{content} [/INST]",
            user_format="{bos}[INST] {content} [/INST]",
            assistant_prefix=" ",
            assistant_end=" {eos}",
        ),
        "chatml": ChatTemplate(
            name="chatml",
            system="You are a helpful assistant.",
            system_format="<|im_start|>system\n{system}<|im_end|>\n",
            first_user_format="{system}<|im_start|>user\n{content}<|im_end|>\n",
            user_format="<|im_start|>user\n{content}<|im_end|>\n",
            assistant_prefix="<|im_start|>assistant\n",
            assistant_end="<|im_end|>",
            assistant_after="\n",
        ),
    }
)


def get_template(template: str | ChatTemplate) -> ChatTemplate:
    """A registered template by name; a ChatTemplate instance passes through."""
    if isinstance(template, ChatTemplate):
        return template
    try:
        return TEMPLATES[template]
    except KeyError:
        raise ValueError(f"unknown template {template!r}; known: {sorted(TEMPLATES)}") from None
