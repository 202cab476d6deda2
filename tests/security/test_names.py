"""One rule for every name that becomes a file name: single component, one spelling."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.errors import InvalidNameError
from bastion.security.names import check_name, name_path

REFUSED = [
    ("../ca", "not a path"),
    ("../../..", "not a path"),
    ("a/b", "not a path"),
    ("/abs", "not a path"),
    ("a\\b", "not a path"),
    ("nul\0byte", "not a path"),
    ("..", "directories, not names"),
    (".", "directories, not names"),
    ("...", "directories, not names"),
    ("", "empty"),
    ("x" * 65, "65 characters"),
    ("x" * 10_000, "10000 characters"),
    ("Alice", "lowercase"),
    ("ALICE", "lowercase"),
    ("\u0430lice", "ASCII"),  # Cyrillic a
    ("\uff41lice", "ASCII"),  # fullwidth a
    ("alice\u200b", "ASCII"),  # zero-width space
    ("ali\u0307ce", "ASCII"),  # combining dot
    (".hidden", "starting with a letter or digit"),
    ("-rf", "starting with a letter or digit"),
    ("alice.", "not ending with '.'"),
    ("has space", "a-z, 0-9"),
    ("tab\tname", "a-z, 0-9"),
    ("new\nline", "a-z, 0-9"),
    ("con", "device name"),
    ("lpt1.crt", "device name"),
]


@pytest.mark.parametrize(("name", "reason"), REFUSED)
def test_unsafe_names_are_refused_with_the_reason(name: str, reason: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        check_name(name, kind="certificate")
    assert reason in info.value.message
    assert info.value.message.startswith("invalid certificate name ")
    assert info.value.status == 400


@pytest.mark.parametrize("name", ["new\nline", "\x1b[31mred", "x" * 10_000])
def test_the_message_shows_the_name_escaped_and_short(name: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        check_name(name, kind="model")
    assert info.value.message.isprintable()
    assert len(info.value.message) < 200


@pytest.mark.parametrize("name", ["alice", "a", "svc.payments", "build_01", "x-1.2", "9" * 64])
def test_plain_names_pass(name: str) -> None:
    assert check_name(name, kind="certificate") == name


def test_reserved_names_are_refused_only_where_reserved() -> None:
    with pytest.raises(InvalidNameError, match="reserved"):
        check_name("ca", kind="certificate", reserved={"ca", "server"})
    assert check_name("ca", kind="model") == "ca"


def test_name_path_is_a_direct_child(tmp_path: Path) -> None:
    assert name_path(tmp_path, "alice", kind="certificate", suffix=".crt") == tmp_path / "alice.crt"


def test_a_symlink_in_place_of_the_file_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    clients = tmp_path / "clients"
    clients.mkdir()
    (clients / "evil.crt").symlink_to(outside)
    (clients / "bob.crt").write_text("bob")
    (clients / "alias.crt").symlink_to(clients / "bob.crt")  # two names, one file
    for name in ("evil", "alias"):
        with pytest.raises(InvalidNameError, match="resolves to"):
            name_path(clients, name, kind="certificate", suffix=".crt")
    assert not outside.exists()
    assert (clients / "evil.crt").readlink() == outside
