"""Chat templates come from the model: they render in a sandbox, within bounds, in a worker
the server can kill; hostile ones are refused at load or fail the request with a 400."""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bastion.engine import chat_template
from bastion.engine.base import ChatMessage
from bastion.engine.chat_template import CHATML, ChatTemplate, TemplateRenderError
from bastion.engine.llamacpp.model import LlamaModel, repack_decision
from bastion.errors import ModelLoadError, ServiceUnavailableError

USER = (ChatMessage("user", "Hi"),)

# Looks harmless on the two-turn check at load, but explodes on a long message.
LONG_CONTENT_BOMB = (
    "{% for m in messages %}{% if m['content']|length > 1000 %}"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "{% endif %}{{ m['content'] }}{% endfor %}"
)
# Loops over a string: no sandbox hook runs per item, so only a timer or the kill can stop it.
SILENT_SPIN = (
    "{% for m in messages %}{% if m['content'] == 'spin' %}{% set s = 'x' * 100000 %}"
    "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}{% endif %}{% endfor %}ok"
)


@pytest.fixture
def chatml() -> Iterator[ChatTemplate]:
    with ChatTemplate(CHATML, bos_token="", eos_token="") as template:
        yield template


def test_chatml_fallback_renders_generation_prompt(chatml: ChatTemplate) -> None:
    rendered = chatml.render(USER)
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_smollm2_template_from_the_gguf_adds_its_default_system_prompt(
    smollm2_file: Path,
) -> None:
    model = LlamaModel(smollm2_file, repack=repack_decision().enabled)
    try:
        source = model.chat_template()
        assert source is not None
        template = ChatTemplate(source, bos_token=model.bos_text, eos_token=model.eos_text)
    finally:
        model.close()
    with template:
        rendered = template.render(USER)
    assert rendered.startswith("<|im_start|>system\n")
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("name", ["smollm2_file", "gemma3_file"])
def test_builtin_templates_render_as_plain_jinja_does(
    name: str, request: pytest.FixtureRequest
) -> None:
    model = LlamaModel(request.getfixturevalue(name), repack=repack_decision().enabled)
    try:
        source = model.chat_template() or CHATML
        bos, eos = model.bos_text, model.eos_text
    finally:
        model.close()
    reference = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    conversations = [
        USER,
        (ChatMessage("system", "Be terse."), *USER),
        (*USER, ChatMessage("assistant", "  Hello! "), ChatMessage("user", "2+2?\n\n")),
        (ChatMessage("user", "x" * 100_000),),
    ]
    with ChatTemplate(source, bos_token=bos, eos_token=eos) as template:
        for messages in conversations:
            for generation_prompt in (True, False):
                expected = reference.from_string(source).render(
                    messages=[{"role": m.role, "content": m.content} for m in messages],
                    add_generation_prompt=generation_prompt,
                    bos_token=bos,
                    eos_token=eos,
                )
                got = template.render(messages, add_generation_prompt=generation_prompt)
                assert got == expected


def test_template_cannot_reach_python_internals() -> None:
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ModelLoadError, match="two-turn"):
        ChatTemplate(evil, bos_token="", eos_token="")


def test_template_cannot_mutate_its_inputs() -> None:
    evil = "{{ messages.append({'role': 'system', 'content': 'x'}) }}"
    with pytest.raises(ModelLoadError, match="two-turn"):
        ChatTemplate(evil, bos_token="", eos_token="")


def test_raise_exception_in_template_is_a_400_naming_messages() -> None:
    strict = "{% if messages|length > 3 %}{{ raise_exception('at most 3 messages') }}{% endif %}ok"
    with (
        ChatTemplate(strict, bos_token="", eos_token="") as template,
        pytest.raises(TemplateRenderError, match="at most 3 messages") as info,
    ):
        template.render(USER * 4)
    assert info.value.status == 400
    assert info.value.param == "messages"


def test_template_that_does_not_compile_refuses_the_model() -> None:
    with pytest.raises(ModelLoadError, match="does not compile"):
        ChatTemplate("{% for %}", bos_token="", eos_token="")


def test_a_template_that_rejects_two_turns_refuses_the_model_with_its_reason() -> None:
    picky = "{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}"
    with pytest.raises(ModelLoadError, match=r"two-turn.*one message only"):
        ChatTemplate(picky, bos_token="", eos_token="")


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "work budget",
        ),
        ("{{ 'x' * 10**9 }}", "longer than"),
        ("{{ [0] * 10**9 }}", "longer than"),
        ("{{ 2 ** 100000000 }}", "too large"),
        ("{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursed"),
        ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "wrote more than"),
        ("{{ 'x'|center(1000000000) }}", "too large"),
        ("{{ '%0999999999d' % 1 }}", "format width"),
        ("{{ '{:999999999}'.format(1) }}", "format width"),
        ("{{ 'x'.ljust(2000000000) }}", "memory"),
        ("{% if true %}" * 200 + "x" + "{% endif %}" * 200, "does not compile"),
        ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "does not compile"),
        (SILENT_SPIN.replace("== 'spin'", "|length > 0"), "time budget"),
        ("{{ '\\ud800' }}", "not valid Unicode"),
        ("{{ '%c' % 55296 }}", "not valid Unicode"),
        ("{{ 'a' ~ '%c'|format(57343) }}", "not valid Unicode"),
    ],
)
def test_hostile_templates_are_refused_at_load_with_the_reason(source: str, reason: str) -> None:
    with pytest.raises(ModelLoadError, match=reason):
        ChatTemplate(source, bos_token="", eos_token="")


def test_an_oversized_template_is_refused_before_compiling() -> None:
    with pytest.raises(ModelLoadError, match="longer than"):
        ChatTemplate("x" * (chat_template.MAX_SOURCE_CHARS + 1), bos_token="", eos_token="")


def test_a_bomb_set_off_by_a_message_is_a_400_and_the_next_render_works() -> None:
    with ChatTemplate(LONG_CONTENT_BOMB, bos_token="", eos_token="") as template:
        with pytest.raises(TemplateRenderError, match="work budget") as info:
            template.render((ChatMessage("user", "a" * 2000),))
        assert info.value.param == "messages"
        assert template.render(USER) == "Hi"


def test_a_loop_that_charges_no_work_is_stopped_by_the_worker_itself() -> None:
    with ChatTemplate(SILENT_SPIN, bos_token="", eos_token="") as template:
        with pytest.raises(TemplateRenderError, match="time budget") as info:
            template.render((ChatMessage("user", "spin"),))
        assert info.value.status == 400
        assert template.render(USER) == "ok"


@pytest.fixture
def killed_on_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's deadline long before the worker's own: only the kill ends a spin."""
    monkeypatch.setattr(chat_template, "RENDER_SECONDS", 60.0)
    monkeypatch.setattr(chat_template, "KILL_GRACE_SECONDS", -59.5)


@pytest.mark.usefixtures("killed_on_deadline")
def test_a_render_past_its_deadline_is_killed_and_the_worker_replaced() -> None:
    with ChatTemplate(SILENT_SPIN, bos_token="", eos_token="") as template:
        with pytest.raises(TemplateRenderError, match="did not finish") as info:
            template.render((ChatMessage("user", "spin"),))
        assert info.value.status == 400
        assert template.render(USER) == "ok"


@pytest.mark.parametrize(
    ("source", "content"),
    [
        ("{% for m in messages %}{{ m['content'] }}{% endfor %}", "a\ud800b"),
        ("{% if messages[-1]['content'] == 'x' %}{{ '%c' % 56320 }}{% endif %}ok", "x"),
        ("{% if messages[-1]['content'] == 'x' %}{{ '\\udfff' }}{% endif %}ok", "x"),
    ],
)
def test_a_lone_surrogate_in_the_prompt_is_a_400_naming_messages(source: str, content: str) -> None:
    with ChatTemplate(source, bos_token="", eos_token="") as template:
        with pytest.raises(TemplateRenderError, match="not valid Unicode") as info:
            template.render((ChatMessage("user", content),))
        assert info.value.status == 400
        assert info.value.param == "messages"


def test_a_prompt_of_characters_outside_the_bmp_fits_the_reply_cap() -> None:
    # JSON writes each as a 12-byte surrogate pair escape: 600,000 are 7.2 MB for ~1 MiB out.
    with ChatTemplate("{{ '\U0001f642' * 600000 }}", bos_token="", eos_token="") as template:
        assert template.render(USER) == "\U0001f642" * 600000


@pytest.mark.timeout(120)
def test_worker_pipes_above_descriptor_1024_work() -> None:
    # The server raises its file limit and serves over 1024 connections: the worker's pipes
    # then get numbers that select() cannot watch.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("the file descriptor limit is too low to push pipes above 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler: list[int] = []
    try:
        while not filler or filler[-1] < 1024:
            filler.append(os.open(os.devnull, os.O_RDONLY))
        with ChatTemplate(CHATML, bos_token="", eos_token="") as template:
            assert template.render(USER).startswith("<|im_start|>user\nHi")
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _lose_worker(template: ChatTemplate) -> None:
    """Have the server kill the worker, so that the next render starts a new one."""
    with pytest.raises(TemplateRenderError, match="did not finish"):
        template.render((ChatMessage("user", "spin"),))


@pytest.mark.usefixtures("killed_on_deadline")
@pytest.mark.parametrize(
    "argv",
    [
        ["/nonexistent/python3"],  # Popen fails: no process at all
        [sys.executable, "-c", "pass"],  # starts, but exits without compiling
    ],
)
def test_a_worker_that_cannot_be_restarted_is_a_503_not_a_load_error(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    with ChatTemplate(SILENT_SPIN, bos_token="", eos_token="") as template:
        _lose_worker(template)
        monkeypatch.setattr(chat_template, "_WORKER", argv)
        with pytest.raises(ServiceUnavailableError, match="could not be restarted") as info:
            template.render(USER)
        assert info.value.status == 503


def test_a_worker_that_cannot_start_at_load_refuses_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chat_template, "_WORKER", ["/nonexistent/python3"])
    with pytest.raises(ModelLoadError, match="could not be started"):
        ChatTemplate(CHATML, bos_token="", eos_token="")


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("killed_on_deadline")
def test_closing_stops_a_worker_that_is_being_restarted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chat_template, "START_SECONDS", 600.0)
    template = ChatTemplate(SILENT_SPIN, bos_token="", eos_token="")
    _lose_worker(template)
    # A replacement that never answers its compile request: only close() can end the wait.
    monkeypatch.setattr(chat_template, "_WORKER", [sys.executable, "-c", "input(); input()"])
    errors = _render_in_thread_then_close(template, USER)
    assert len(errors) == 1
    assert isinstance(errors[0], ServiceUnavailableError)


def test_an_exchange_interrupted_after_writing_resets_the_worker(
    monkeypatch: pytest.MonkeyPatch, chatml: ChatTemplate
) -> None:
    # The worker still answers the interrupted request; the next render must not read that.
    read_exact = chat_template._read_exact

    def interrupted(fd: int, size: int, deadline: float) -> bytes:
        monkeypatch.setattr(chat_template, "_read_exact", read_exact)
        raise KeyboardInterrupt

    monkeypatch.setattr(chat_template, "_read_exact", interrupted)
    with pytest.raises(KeyboardInterrupt):
        chatml.render((ChatMessage("user", "first"),))
    assert chatml.render(USER) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    "content",
    [
        "{{ m['content']|lower }}",
        "{{ m['content']|upper }}",
        "{{ m['content']|title }}",
        "{{ m['content']|replace('M', 'm') }}",
        "{{ m['content'][1:] }}",
        "{{ m['content'][::-1] }}",
    ],
)
def test_a_template_that_changes_content_is_logged_as_weakening_shielding(
    caplog: pytest.LogCaptureFixture, content: str
) -> None:
    source = "{% for m in messages %}" + content + "{% endfor %}"
    with caplog.at_level(logging.WARNING, logger="bastion.engine.chat_template"):
        ChatTemplate(source, bos_token="", eos_token="", model_name="tiny-chat").close()
    assert "'tiny-chat'" in caplog.text
    assert "shielding may be incomplete" in caplog.text


@pytest.mark.parametrize(
    "source", [CHATML, "{% for m in messages %}{{ '  ' + m['content']|trim + '\n' }}{% endfor %}"]
)
def test_a_template_that_keeps_content_is_not_logged(
    caplog: pytest.LogCaptureFixture, source: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="bastion.engine.chat_template"):
        ChatTemplate(source, bos_token="", eos_token="", model_name="tiny-chat").close()
    assert "shielding" not in caplog.text


def _render_in_thread_then_close(
    template: ChatTemplate, messages: tuple[ChatMessage, ...]
) -> list[BaseException]:
    errors: list[BaseException] = []

    def render() -> None:
        try:
            template.render(messages)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    thread = threading.Thread(target=render)
    thread.start()
    thread.join(timeout=0.5)
    template.close()
    thread.join()
    return errors


def test_closing_stops_a_render_in_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    # A long deadline: only close() can end this render, so the outcome shows who ended it.
    monkeypatch.setattr(chat_template, "RENDER_SECONDS", 600.0)
    template = ChatTemplate(SILENT_SPIN, bos_token="", eos_token="")
    errors = _render_in_thread_then_close(template, (ChatMessage("user", "spin"),))
    assert len(errors) == 1
    assert isinstance(errors[0], ServiceUnavailableError)
    with pytest.raises(ServiceUnavailableError):
        template.render(USER)
