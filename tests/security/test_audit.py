"""The audit chain: edited, deleted or reordered lines are found, across rotation."""

from __future__ import annotations

import json
from pathlib import Path

from bastion.security.audit import LOG_NAME, AuditLog, verify_chain
from tests.conftest import bastion_command


def filled(directory: Path, n: int = 5, max_bytes: int = 1 << 20) -> AuditLog:
    log = AuditLog(directory, max_bytes=max_bytes)
    for i in range(n):
        log.append({"request_id": f"req_{i}", "identity": "loopback", "status": 200})
    return log


def lines(directory: Path) -> list[str]:
    return (directory / LOG_NAME).read_text().splitlines()


def test_an_intact_log_verifies_and_is_private(tmp_path: Path) -> None:
    filled(tmp_path)
    assert verify_chain(tmp_path) == []
    assert oct((tmp_path / LOG_NAME).stat().st_mode & 0o777) == "0o600"


def test_an_edited_line_is_found_by_number(tmp_path: Path) -> None:
    filled(tmp_path)
    content = lines(tmp_path)
    record = json.loads(content[2])
    record["status"] = 500
    content[2] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    (tmp_path / LOG_NAME).write_text("\n".join(content) + "\n")
    problems = verify_chain(tmp_path)
    assert [p.line for p in problems] == [3]
    assert "edited" in problems[0].reason


def test_a_deleted_line_is_found(tmp_path: Path) -> None:
    filled(tmp_path)
    content = lines(tmp_path)
    del content[1]
    (tmp_path / LOG_NAME).write_text("\n".join(content) + "\n")
    assert [p.line for p in verify_chain(tmp_path)] == [2]


def test_reordered_lines_are_found(tmp_path: Path) -> None:
    filled(tmp_path)
    content = lines(tmp_path)
    content[1], content[2] = content[2], content[1]
    (tmp_path / LOG_NAME).write_text("\n".join(content) + "\n")
    assert verify_chain(tmp_path)


def test_rotation_keeps_the_chain(tmp_path: Path) -> None:
    filled(tmp_path, n=40, max_bytes=4096)
    assert (tmp_path / f"{LOG_NAME}.1").exists()
    assert verify_chain(tmp_path) == []
    reopened = AuditLog(tmp_path, max_bytes=4096)  # a restart continues the same chain
    reopened.append({"request_id": "after-restart"})
    assert verify_chain(tmp_path) == []


def test_records_longer_than_a_read_block_keep_the_chain(tmp_path: Path) -> None:
    """With ``audit.include_content`` a line can hold a whole prompt."""
    log = filled(tmp_path, n=2)
    log.append({"request_id": "long", "prompt": "p" * 300_000, "completion": "c" * 70_000})
    log.append({"request_id": "after"})
    assert verify_chain(tmp_path) == []


def test_two_writers_on_one_home_keep_one_chain(tmp_path: Path) -> None:
    """Each writer remembers its last line; another process's append must not be skipped."""
    first, second = AuditLog(tmp_path), AuditLog(tmp_path)
    for i in range(6):
        (first if i % 2 else second).append({"request_id": f"req_{i}"})
    assert verify_chain(tmp_path) == []


def test_cli_exits_1_with_the_line_number(tmp_path: Path) -> None:
    home = tmp_path / "home"
    filled(home / "audit")
    env = {"BASTION_HOME": str(home)}
    assert bastion_command(env, "audit", "verify").returncode == 0
    content = lines(home / "audit")
    content[0] = content[0].replace("loopback", "key:admin")
    (home / "audit" / LOG_NAME).write_text("\n".join(content) + "\n")
    result = bastion_command(env, "audit", "verify")
    assert result.returncode == 1
    assert f"{LOG_NAME}:1:" in result.stderr
