"""Inside the worker: the bounded sandbox keeps Jinja's behaviour and enforces each bound."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from jinja2.exceptions import UndefinedError

from bastion.engine.template_worker import (
    InvalidOutputError,
    LimitExceededError,
    TemplateRaisedError,
    Worker,
)

MESSAGES = [
    {"role": "system", "content": "  Be terse.  "},
    {"role": "user", "content": "Hi"},
]


def render(
    source: str,
    *,
    max_output: int = 100_000,
    max_ops: int = 100_000,
    seconds: float = 60.0,
    messages: list[dict[str, str]] = MESSAGES,
) -> str:
    request: dict[str, Any] = {
        "messages": messages,
        "add_generation_prompt": True,
        "max_output": max_output,
        "max_ops": max_ops,
        "seconds": seconds,
    }
    return Worker(source, "<s>", "</s>").render(request)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ messages[0]['content']|trim }}", "Be terse."),
        ("{{ messages|map(attribute='role')|join(',') }}", "system,user"),
        ("{{ messages|selectattr('role', 'equalto', 'user')|list|length }}", "1"),
        ("{{ messages[1]|tojson }}", '{"content": "Hi", "role": "user"}'),
        ("{{ 'a\nb'|indent(2, first=true) }}", "  a\n  b"),
        ("{% for m in messages %}{{ loop.cycle('x', 'y') }}{% endfor %}", "xy"),
        (
            (
                "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}"
                "{% endfor %}{{ ns.n }}"
            ),
            "3",
        ),
        ("{{ bos_token }}{% if messages[1] is defined and 'x' is string %}ok{% endif %}", "<s>ok"),
        ("{{ '%s-%03d' % ('a', 7) }} {{ '{}:{:>4}'.format('b', 1) }}", "a-007 b:   1"),
        ("{{ 'ab' * 3 }}{{ [1] + [2] }}{{ 2 ** 10 }}", "ababab[1, 2]1024"),
        ("{{ strftime_now('%Y')|length }}", "4"),
    ],
)
def test_ordinary_template_features_still_work(source: str, expected: str) -> None:
    assert render(source) == expected


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{{ messages[0] }}{% endfor %}",
        "{% for i in range(100000) %}{{ i is even }}{% endfor %}",
        "{% for i in range(100000) %}{{ 'x'|upper }}{% endfor %}",
    ],
)
def test_work_is_budgeted_whatever_the_loop_body_does(source: str) -> None:
    with pytest.raises(LimitExceededError, match="work budget"):
        render(source, max_ops=50_000, max_output=10**9)


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 200000 }}",
        "{{ 200000 * 'x' }}",
        "{{ ['x'] * 200000 }}",
        "{% set s = 'x' * 60000 %}{{ s + s }}",
        "{{ ('x' * 60000).replace('x', 'xx') }}",
        "{{ ('x' * 60000)|replace('x', 'xx') }}",
    ],
)
def test_values_larger_than_the_cap_are_refused(source: str) -> None:
    with pytest.raises(LimitExceededError, match="longer than"):
        render(source, max_output=100_000)


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x'|center(10**9) }}",
        "{{ 'x'|indent(10**9) }}",
        "{{ 'x'|wordwrap(5, wrapstring=' ')|truncate(10**9) }}",
        "{{ '%0*d' % (10**9, 1) }}",
        "{{ '%0999999999d' % 1 }}",
        "{{ '%0999999999d'|format(1) }}",
        "{{ '{:999999999}'.format(1) }}",
        "{{ '{:{}}'.format(1, 10**9) }}",
        "{{ 2 ** 100000 }}",
        "{{ (2 ** 4000) * (2 ** 4000) }}",
    ],
)
def test_sizes_are_checked_before_the_work_is_done(source: str) -> None:
    with pytest.raises(LimitExceededError):
        render(source)


def test_output_is_capped_while_it_streams() -> None:
    with pytest.raises(LimitExceededError, match="wrote more than 1000"):
        render("{% for i in range(500) %}{{ 'ab' }}{% endfor %}x", max_output=1000)


def test_raise_exception_reports_escaped_text() -> None:
    with pytest.raises(TemplateRaisedError) as info:
        render("{{ raise_exception('bad\nline\x1b[31m') }}")
    assert str(info.value) == "bad\\nline\\x1b[31m"


def test_lipsum_is_not_available() -> None:
    with pytest.raises(UndefinedError, match="lipsum"):
        render("{{ lipsum(100000) }}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "source",
    [
        "{% for a in m %}{% for b in m %}{% endfor %}{% endfor %}",
        "{% set l = m|list %}{% for a in l %}{% for b in l %}{% endfor %}{% endfor %}",
        "{% for a in m %}{% for b in m %}{% for c in m %}{% endfor %}{% endfor %}{% endfor %}",
    ],
)
def test_loops_that_charge_no_work_stop_at_the_deadline(source: str) -> None:
    # Iterating a string or list runs no sandbox hook: only the timer interrupts it.
    spin = "{% for msg in messages %}{% set m = msg['content'] %}" + source + "{% endfor %}"
    long = [{"role": "user", "content": "x" * 50_000}]
    with pytest.raises(LimitExceededError, match="time budget"):
        render(spin, seconds=0.2, max_ops=10**9, messages=long)


def test_the_timer_is_cleared_after_each_render() -> None:
    before = signal.getsignal(signal.SIGALRM)
    assert render("ok") == "ok"
    with pytest.raises(LimitExceededError):
        render("{{ 'x' * 10**9 }}")
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is before


@pytest.mark.parametrize(
    "source",
    [
        "{{ '\\ud800' }}",
        "{{ 'ok\\udfff' }}",
        "{{ '%c' % 55296 }}",
        "{{ '%c'|format(56320) }}",
        "{{ '{:c}'.format(55296) }}",
    ],
)
def test_a_lone_surrogate_in_the_output_is_refused(source: str) -> None:
    with pytest.raises(InvalidOutputError, match="not valid Unicode"):
        render(source)


def test_characters_outside_the_bmp_are_valid_output() -> None:
    assert render("{{ '%c' % 128578 }}{{ '\\U0001f642' }}") == "\U0001f642" * 2
