"""Chat prompts to tokens, with control tokens only where the template wrote them."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bastion.engine.base import ChatMessage, GenerationParams
from bastion.engine.chat_template import ChatTemplate
from bastion.engine.llamacpp.model import LlamaModel
from bastion.engine.special_text import SpecialTextShield
from bastion.errors import InvalidRequestError, ModelNotChatError

log = logging.getLogger(__name__)


def chat_prompt(
    name: str, model: LlamaModel, catalog_template: str | None, *, completion_only: bool
) -> ChatPrompt | None:
    """The catalog's template, else the GGUF's; without one the model is completion only.

    No fallback: a base model under a guessed format (ChatML) answers chat with the format's
    markers as text, which looks like a broken server rather than a wrong model. A
    completion-only model starts no template worker.
    """
    source = None if completion_only else catalog_template or model.chat_template()
    if source is None:
        why = (
            "the catalog marks it as a base model"
            if completion_only
            else "it carries no chat template"
        )
        log.info(
            "%s is completion only (%s): /v1/chat/completions refuses it with 400; "
            "give it a chat_template in the catalog to chat",
            name,
            why,
        )
        return None
    template = ChatTemplate(
        source, bos_token=model.bos_text, eos_token=model.eos_text, model_name=name
    )
    return ChatPrompt(model, template)


class ChatPrompt:
    """Renders a conversation with a model's template and tokenizes it (see ``special_text``)."""

    def __init__(self, model: LlamaModel, template: ChatTemplate) -> None:
        self._model = model
        self._template = template
        self._shield = SpecialTextShield(model.special_texts())

    @property
    def template(self) -> ChatTemplate:
        return self._template

    def tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        model = self._model
        shielded = self._shield.shield(messages)
        rendered = self._template.render(shielded.messages)
        bos = model.bos_text
        # Templates that write BOS themselves get no second one; a vocabulary may have none.
        wants_bos = model.add_bos and model.bos >= 0
        tokens = [model.bos] if wants_bos and not (bos and rendered.startswith(bos)) else []
        for segment in shielded.segments(rendered):
            tokens += model.tokenize(
                segment.text, add_special=False, parse_special=not segment.literal
            )
        return tokens


def request_tokens(
    name: str, model: LlamaModel, chat: ChatPrompt | None, params: GenerationParams
) -> list[int]:
    """The prompt tokens of one request; ``chat`` is None for a completion-only model."""
    if params.messages is not None:
        if chat is None:
            raise ModelNotChatError(
                f"model '{name}' is completion only: it takes a prompt, not messages",
                param="model",
            )
        tokens = chat.tokens(params.messages)
    else:
        # A raw completion prompt is the caller's own: its special tokens are parsed, as in
        # llama-server (a chat turn's content never is; see ``ChatPrompt``).
        tokens = model.tokenize(params.prompt or "", add_special=model.add_bos)
    if not tokens:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    return tokens
