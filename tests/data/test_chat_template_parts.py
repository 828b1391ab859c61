"""Our chat templates take content parts as OpenAI-compatible servers hand them over
(transformers serve, vLLM): a teacher directory we write must render a request with an
image_url part exactly as our own training rendered "<image>\\n" + the question."""
import pytest

from comd_jax.data.templates import TEMPLATES
from tests.data.conftest import make_word_tokenizer


def _parts(text: str, images: int = 0, kind: str = "image_url") -> list:
    image = {"type": kind, kind: {"url": "data:image/png;base64,AAAA"}} if kind != "image" else {"type": "image"}
    return [image] * images + [{"type": "text", "text": text}]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("kind", ["image_url", "image"])
def test_content_parts_render_as_the_string_they_stand_for(name, kind):
    tok = make_word_tokenizer()
    tok.chat_template = TEMPLATES[name].to_jinja()
    if TEMPLATES[name].max_exchanges == 1:
        as_text = [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "A red square ."}]
        as_parts = [{"role": "user", "content": _parts("", 1, kind)},
                    {"role": "assistant", "content": [{"type": "text", "text": "A red square ."}]}]
    else:
        as_text = [{"role": "system", "content": "Be brief ."},
                   {"role": "user", "content": "<image>\nWhat colour is the circle ?"},
                   {"role": "assistant", "content": "It is red ."}, {"role": "user", "content": "Is it big ?"}]
        as_parts = [{"role": "system", "content": [{"type": "text", "text": "Be brief ."}]},
                    {"role": "user", "content": _parts("What colour is the circle ?", 1, kind)},
                    {"role": "assistant", "content": [{"type": "text", "text": "It is red ."}]},
                    {"role": "user", "content": _parts("Is it big ?")}]
    want = tok.apply_chat_template(as_text, tokenize=False, add_generation_prompt=as_text[-1]["role"] == "user")
    got = tok.apply_chat_template(as_parts, tokenize=False, add_generation_prompt=as_parts[-1]["role"] == "user")
    assert got == want
    assert "<image>" in got and "image_url" not in got and "data:" not in got
