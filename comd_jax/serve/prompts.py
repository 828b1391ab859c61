"""OpenAI chat messages → an engine Request, checked against the server's limits.

Images arrive only as base64 data URLs (no remote or local-file URLs: the
server never reads a path or fetches a URL on a client's behalf) and go
through the training pipeline's LLaVA-1.5 preprocessing; each image part puts
one `<image>` placeholder in the prompt, where it appeared. Every problem is
a `RequestError` naming the offending field, which the server returns as 400.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import re

import numpy as np
from PIL import Image

from comd_jax.data import images as images_lib
from comd_jax.data.templates import ASSISTANT, IMAGE_PLACEHOLDER, USER, get_template
from comd_jax.serve.requests import Request
from comd_jax.serve.sampling import SamplingParams

_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,(.*)$", re.DOTALL)


class RequestError(ValueError):
    """A client mistake: `param` names the field (OpenAI's error shape)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 16 * 2 ** 20
    max_images: int = 4  # per request
    max_image_pixels: int = 2048 * 2048  # width x height of one decoded image
    max_prompt_tokens: int = 768
    max_output_tokens: int = 256
    max_n: int = 8
    max_stop: int = 4
    max_top_logprobs: int = 20  # k of top_logprobs (at most sampling.TOP_LOGPROBS)

    def __post_init__(self):
        from comd_jax.serve.sampling import TOP_LOGPROBS

        if not 0 <= self.max_top_logprobs <= TOP_LOGPROBS:
            raise ValueError(f"max_top_logprobs must be in [0, {TOP_LOGPROBS}], got {self.max_top_logprobs}")


class Prompter:
    def __init__(self, tokenizer, image_processor: images_lib.ImageProcessorConfig, *, template: str,
                 image_token_id: int, num_image_tokens: int, limits: Limits = Limits()):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template = get_template(template)
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        self.limits = limits

    def request(self, messages, params: SamplingParams, *, continue_final: bool = False,
                generation_prompt: bool = True) -> Request:
        """OpenAI `messages` (already JSON-decoded) → Request; raises RequestError.

        `continue_final` (vLLM's `continue_final_message`): the last message is the assistant's,
        and the prompt ends inside it, where training would put its end token; with
        `prompt_logprobs` that scores a given answer. `generation_prompt` False
        (`add_generation_prompt`): a prompt ending with the user turn, without the assistant's
        prefix."""
        system, turns, raw_images = self._parse(messages, continue_final)
        ids = self._tokenize(turns, system, len(raw_images), continue_final, generation_prompt)
        pixels = np.stack([self._image(b, i) for i, b in enumerate(raw_images)]) if raw_images else None
        return Request(ids, pixels, params)

    def prompt_ids(self, turns, system=None, num_images: int = 0) -> np.ndarray:
        """(role, text with `<image>` placeholders) turns → prompt ids, images expanded.
        The in-process path (e.g. the student's answers during assessment)."""
        return self._tokenize(turns, system, num_images)

    # -- messages ------------------------------------------------------------------
    def _parse(self, messages, continue_final: bool = False):
        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty list", "messages")
        system, turns, raw_images = None, [], []
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                raise RequestError(f"{where} must be an object", where)
            role = message.get("role")
            text = self._content(message.get("content"), where, raw_images if role == USER else None)
            if role == "system" and not turns:
                system = text
            elif role in (USER, ASSISTANT):
                expected = USER if len(turns) % 2 == 0 else ASSISTANT
                if role != expected:
                    raise RequestError(f"{where}: expected a {expected} message (turns alternate, user first)",
                                       f"{where}.role")
                turns.append((role, text))
            else:
                raise RequestError(f"{where}: role must be system (first), user or assistant, got {role!r}",
                                   f"{where}.role")
        last = ASSISTANT if continue_final else USER
        if not turns or turns[-1][0] != last:
            raise RequestError(f"the last message must come from the {last}" +
                               (" (continue_final_message)" if continue_final else ""), "messages")
        if len(raw_images) > self.limits.max_images:
            raise RequestError(f"{len(raw_images)} images; at most {self.limits.max_images} per request",
                               "messages")
        return system, turns, raw_images

    def _content(self, content, where: str, raw_images) -> str:
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = content
        else:
            raise RequestError(f"{where}.content must be a string or a list of parts", f"{where}.content")
        text = []
        for j, part in enumerate(parts):
            here = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                if IMAGE_PLACEHOLDER in part["text"]:
                    raise RequestError(f"{here}: text may not contain {IMAGE_PLACEHOLDER!r}; send images as "
                                       "image_url parts", here)
                text.append(part["text"])
            elif kind == "image_url" and raw_images is not None:
                raw_images.append(self._data_url(part.get("image_url"), here))
                text.append(IMAGE_PLACEHOLDER + "\n")
            elif kind == "image_url":
                raise RequestError(f"{here}: images are accepted in user messages only", here)
            else:
                raise RequestError(f"{here}: a part is {{'type': 'text', 'text': str}} or "
                                   "{'type': 'image_url', 'image_url': {'url': 'data:image/...;base64,...'}}", here)
        return "".join(text)

    def _data_url(self, image_url, where: str) -> bytes:
        url = image_url.get("url") if isinstance(image_url, dict) else image_url
        if not isinstance(url, str):
            raise RequestError(f"{where}.image_url.url must be a string", f"{where}.image_url")
        match = _DATA_URL.match(url)
        if not match:
            raise RequestError(f"{where}: only base64 data URLs (data:image/...;base64,...) are accepted; "
                               "remote and file URLs are off", f"{where}.image_url")
        try:
            return base64.b64decode(match.group(1), validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{where}: the data URL is not valid base64", f"{where}.image_url") from None

    # -- images and tokens -----------------------------------------------------------
    def _image(self, data: bytes, index: int) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(data)) as probe:  # header only: size before decoding
                width, height = probe.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise RequestError(f"image {index}: not a readable image ({e})", "messages") from None
        if width * height > self.limits.max_image_pixels:
            raise RequestError(f"image {index}: {width}x{height} pixels exceeds the limit of "
                               f"{self.limits.max_image_pixels}", "messages")
        try:
            return images_lib.preprocess(images_lib.load_image(data), self.image_processor)
        except Exception as e:
            raise RequestError(f"image {index}: {e}", "messages") from None

    def _tokenize(self, turns, system, num_images: int, continue_final: bool = False,
                  generation_prompt: bool = True) -> np.ndarray:
        tok = self.tokenizer
        special = dict(bos=tok.bos_token or "", eos=tok.eos_token or "", system=system)
        if continue_final:
            text = self.template.render_continuation(turns, **special)
        elif generation_prompt:
            text = self.template.render_prompt(turns, **special)
        else:
            text = "".join(s.text for s in self.template.render(turns, **special))
        ids = np.asarray(tok(text, add_special_tokens=False).input_ids, np.int32)
        is_image = ids == self.image_token_id
        if int(is_image.sum()) != num_images:
            raise RequestError(f"{num_images} image(s) became {int(is_image.sum())} image tokens", "messages")
        ids = np.repeat(ids, np.where(is_image, self.num_image_tokens, 1)).astype(np.int32)
        if len(ids) > self.limits.max_prompt_tokens:
            raise RequestError(f"the prompt has {len(ids)} tokens (images included); the limit is "
                               f"{self.limits.max_prompt_tokens}", "messages", code="context_length_exceeded")
        return ids
