"""``bastion audit verify``: exit 0 only for an anchored, unbroken log; exit 1 naming what is
wrong; ``--checkpoint`` and ``--key`` for checking against copies kept elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.integrity.signing import SecretKey
from bastion.integrity.trust import local_key
from bastion.security.audit import LOG_NAME, AuditLog
from bastion.security.checkpoints import checkpoints_path
from tests.conftest import bastion_command


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    log = AuditLog(home / "audit", signer=local_key(home))
    for i in range(5):
        log.append({"request_id": f"req_{i}", "identity": "key:alice", "status": 200})
    log.checkpoint("shutdown")
    return home


def verify(home: Path, *args: str) -> tuple[int, str, str]:
    result = bastion_command({"BASTION_HOME": str(home)}, "audit", "verify", *args)
    return result.returncode, result.stdout, result.stderr


def test_an_anchored_log_is_intact(home: Path) -> None:
    code, out, _ = verify(home)
    assert code == 0
    assert "audit log intact" in out
    assert "checkpoints cover records up to 5" in out
    assert local_key(home).public.id_text in out, (
        "the key id, to compare with a copy kept elsewhere"
    )


def test_an_edited_line_exits_1_with_the_line_number(home: Path) -> None:
    path = home / "audit" / LOG_NAME
    content = path.read_text().splitlines()
    content[0] = content[0].replace("key:alice", "key:admin")
    path.write_text("\n".join(content) + "\n")
    code, _, err = verify(home)
    assert code == 1
    assert f"BROKEN {LOG_NAME}:1:" in err


def test_a_dropped_tail_exits_1(home: Path) -> None:
    path = home / "audit" / LOG_NAME
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:3]))
    code, _, err = verify(home)
    assert code == 1
    assert "records 4..5 were removed" in err


def test_records_after_the_last_checkpoint_are_named(home: Path) -> None:
    AuditLog(home / "audit").append({"request_id": "late", "identity": "key:alice"})
    code, out, _ = verify(home)
    assert code == 0
    assert "NOTE records 6..6" in out
    assert "1 records not yet anchored" in out


def test_a_deleted_checkpoints_file_is_named_unverified_and_caught_by_a_copy(home: Path) -> None:
    """Before any rotation, a missing checkpoints file looks like a server that has not
    written one yet: the length is reported as unchecked, never as intact."""
    local = checkpoints_path(home / "audit" / LOG_NAME)
    kept = local.read_text()
    local.unlink()
    code, out, _ = verify(home)
    assert code == 0
    assert "UNVERIFIED" in out
    assert "5 records not yet anchored" in out
    assert "audit log intact" not in out
    shipped = home.parent / "from-syslog.log"
    shipped.write_text(f"Nov 25 13:00:00 box bastion-audit-checkpoint: {kept}")
    pub = home.parent / "server.pub"
    pub.write_text(local_key(home).public.dump())
    code, out, err = verify(home, "--checkpoint", str(shipped), "--key", str(pub))
    assert code == 1
    assert "checkpoints cover records up to 5" in out, "the log itself checks out"
    assert "UNVERIFIABLE" not in err
    assert "audit.checkpoints.jsonl: missing (deleted)" in err


def test_a_log_re_signed_with_a_replaced_server_key_fails_against_the_known_key(
    home: Path,
) -> None:
    """Someone with disk access swaps keys/signing.* and re-signs: the off-box key catches it."""
    known = home.parent / "known.pub"
    known.write_text(local_key(home).public.dump())
    other = SecretKey.generate()
    (home / "keys" / "signing.key").write_text(other.dump())
    (home / "keys" / "signing.pub").write_text(other.public.dump())
    local = checkpoints_path(home / "audit" / LOG_NAME)
    local.unlink()
    AuditLog(home / "audit", signer=other).checkpoint("shutdown")
    assert verify(home)[0] == 0, "locally, the replaced key vouches for itself"
    code, _, err = verify(home, "--key", str(known))
    assert code == 1
    assert "not the server key" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "/nonexistent/cp"], "no such file"),
        (["--key", "/nonexistent/key.pub"], "no such file"),
    ],
)
def test_missing_inputs_are_usage_errors(home: Path, args: list[str], message: str) -> None:
    code, _, err = verify(home, *args)
    assert code == 2
    assert message in err


def test_lines_given_as_checkpoints_that_are_not_are_named(home: Path) -> None:
    empty = home.parent / "empty.log"
    empty.write_text("nothing here\n")
    code, _, err = verify(home, "--checkpoint", str(empty))
    assert code == 1
    assert "empty.log:1: checkpoint rejected: not a checkpoint line" in err


@pytest.mark.parametrize(
    "line",
    ['{"signature": 5, "key_id": []}', '{"log":' * 100_000 + "1" + "}" * 100_000],
    ids=["non-text-signature", "deeply-nested"],
)
def test_a_hostile_line_in_collected_checkpoints_is_named_not_a_traceback(
    home: Path, line: str
) -> None:
    """Any local user can write to syslog: such a line is a rejected checkpoint."""
    kept = checkpoints_path(home / "audit" / LOG_NAME).read_text()
    shipped = home.parent / "from-syslog.log"
    shipped.write_text(f"Nov 25 13:00:00 box bastion-audit-checkpoint: {line}\n{kept}")
    code, out, err = verify(home, "--checkpoint", str(shipped))
    assert code == 1
    assert "from-syslog.log:1: checkpoint rejected: not a checkpoint line" in err
    assert "Traceback" not in err
    assert "checkpoints cover records up to 5" in out, "the valid line still counts"
