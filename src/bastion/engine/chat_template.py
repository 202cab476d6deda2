"""Chat templates from model metadata, rendered in a sandboxed Jinja environment.

Templates ship inside model files, so they are untrusted input: the immutable sandbox refuses
attribute access to internals and mutation of the values passed in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, NoReturn

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bastion.engine.base import ChatMessage
from bastion.errors import InvalidRequestError, ModelLoadError

# Used when a model carries no template: ChatML, which most small instruct models speak.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateRenderError(InvalidRequestError):
    """The template rejected the conversation (e.g. roles out of order)."""

    code = "invalid_messages"


def _raise_exception(message: str) -> NoReturn:
    raise TemplateRenderError(
        f"the model's chat template rejected the messages: {message}", param="messages"
    )


def _strftime_now(fmt: str) -> str:
    return dt.datetime.now(tz=dt.UTC).strftime(fmt)


class ChatTemplate:
    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise ModelLoadError(f"the model's chat template does not compile: {exc}") from None
        self._bos = bos_token
        self._eos = eos_token

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        context: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self._bos,
            "eos_token": self._eos,
        }
        try:
            return self._template.render(**context)
        except TemplateRenderError:
            raise
        except TemplateError as exc:
            raise TemplateRenderError(
                f"the model's chat template failed on these messages ({exc.__class__.__name__})",
                param="messages",
            ) from None
