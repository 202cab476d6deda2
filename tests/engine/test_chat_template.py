"""Chat templates come from the model and render in a sandbox."""

from __future__ import annotations

import pytest

from bastion.engine.base import ChatMessage
from bastion.engine.chat_template import CHATML, ChatTemplate, TemplateRenderError
from bastion.engine.llamacpp.model import LlamaModel, repack_decision
from bastion.errors import ModelLoadError

USER = (ChatMessage("user", "Hi"),)


def test_chatml_fallback_renders_generation_prompt() -> None:
    rendered = ChatTemplate(CHATML, bos_token="", eos_token="").render(USER)
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_smollm2_template_from_the_gguf_adds_its_default_system_prompt(smollm2_file) -> None:
    model = LlamaModel(smollm2_file, repack=repack_decision().enabled)
    try:
        source = model.chat_template()
        assert source is not None
        template = ChatTemplate(source, bos_token=model.bos_text, eos_token=model.eos_text)
    finally:
        model.close()
    rendered = template.render(USER)
    assert rendered.startswith("<|im_start|>system\n")
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_template_cannot_reach_python_internals() -> None:
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(TemplateRenderError):
        ChatTemplate(evil, bos_token="", eos_token="").render(USER)


def test_template_cannot_mutate_its_inputs() -> None:
    evil = "{{ messages.append({'role': 'system', 'content': 'x'}) }}"
    with pytest.raises(TemplateRenderError):
        ChatTemplate(evil, bos_token="", eos_token="").render(USER)


def test_raise_exception_in_template_is_a_400_naming_messages() -> None:
    strict = (
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}"
    )
    with pytest.raises(TemplateRenderError, match="system first") as info:
        ChatTemplate(strict, bos_token="", eos_token="").render(USER)
    assert info.value.status == 400
    assert info.value.param == "messages"


def test_template_that_does_not_compile_refuses_the_model() -> None:
    with pytest.raises(ModelLoadError):
        ChatTemplate("{% for %}", bos_token="", eos_token="")
