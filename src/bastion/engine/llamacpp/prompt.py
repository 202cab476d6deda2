"""Chat prompts to tokens, with control tokens only where the template wrote them."""

from __future__ import annotations

from collections.abc import Sequence

from bastion.engine.base import ChatMessage, GenerationParams
from bastion.engine.chat_template import ChatTemplate
from bastion.engine.llamacpp.model import LlamaModel
from bastion.engine.special_text import SpecialTextShield
from bastion.errors import InvalidRequestError, ModelNotChatError


class ChatPrompt:
    """Renders a conversation with a model's template and tokenizes it (see ``special_text``)."""

    def __init__(self, model: LlamaModel, template: ChatTemplate) -> None:
        self._model = model
        self._template = template
        self._shield = SpecialTextShield(model.special_texts())

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
