"""The audit log: a numbered hash chain across rotation, signed checkpoints written at
rotation and on demand, and unauthenticated traffic kept apart from real callers' records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.integrity.signing import SecretKey
from bastion.security.audit import (
    LOG_NAME,
    UNAUTHENTICATED_NAME,
    AuditLog,
    AuditTrail,
    digest,
    parse_record,
)
from bastion.security.audit_verify import verify_chain, verify_log
from bastion.security.checkpoints import Checkpoint, checkpoints_path

KEY = SecretKey.generate()


def filled(
    directory: Path, n: int = 5, max_bytes: int = 1 << 20, signer: SecretKey | None = None
) -> AuditLog:
    log = AuditLog(directory, max_bytes=max_bytes, signer=signer)
    for i in range(n):
        log.append({"request_id": f"req_{i}", "identity": "loopback", "status": 200})
    return log


def lines(directory: Path, name: str = LOG_NAME) -> list[str]:
    return (directory / name).read_text().splitlines()


def records(directory: Path, name: str = LOG_NAME) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines(directory, name)]


def checkpoints(directory: Path, name: str = LOG_NAME) -> list[Checkpoint]:
    text = checkpoints_path(directory / name).read_text()
    return [Checkpoint.parse(line) for line in text.splitlines() if line]


def test_an_intact_log_verifies_and_is_private(tmp_path: Path) -> None:
    filled(tmp_path, signer=KEY).checkpoint("periodic")
    assert verify_chain(tmp_path) == []
    for path in (tmp_path / LOG_NAME, checkpoints_path(tmp_path / LOG_NAME)):
        assert oct(path.stat().st_mode & 0o777) == "0o600"


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


def test_records_are_numbered_from_one_across_rotation_and_restart(tmp_path: Path) -> None:
    filled(tmp_path, n=40, max_bytes=4096)
    assert (tmp_path / f"{LOG_NAME}.1").exists()
    assert verify_chain(tmp_path) == []
    reopened = AuditLog(tmp_path, max_bytes=4096)  # a restart continues the same chain
    reopened.append({"request_id": "after-restart"})
    assert verify_chain(tmp_path) == []
    assert records(tmp_path)[-1]["seq"] == 41
    assert json.loads((tmp_path / f"{LOG_NAME}.1").read_text().splitlines()[0])["seq"] > 1


def test_a_log_from_before_numbering_continues_with_its_line_count(tmp_path: Path) -> None:
    filled(tmp_path, n=3)
    legacy = []
    for line in lines(tmp_path):  # rewrite as an older bastion wrote it: no "seq"
        entry = json.loads(line)
        del entry["seq"], entry["hash"]
        entry["prev"] = json.loads(legacy[-1])["hash"] if legacy else "0" * 64
        entry["hash"] = digest(entry["prev"], entry)
        legacy.append(json.dumps(entry, sort_keys=True, separators=(",", ":")))
    (tmp_path / LOG_NAME).write_text("\n".join(legacy) + "\n")
    AuditLog(tmp_path).append({"request_id": "new"})
    assert records(tmp_path)[-1]["seq"] == 4
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
    assert [r["seq"] for r in records(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_rotation_signs_the_head_of_the_file_it_rotates_out(tmp_path: Path) -> None:
    filled(tmp_path, n=40, max_bytes=4096, signer=KEY)
    rotations = [c for c in checkpoints(tmp_path) if c.reason == "rotate"]
    assert rotations
    for checkpoint in rotations:
        checkpoint.check([KEY.public])
    rotated_last = json.loads((tmp_path / f"{LOG_NAME}.1").read_text().splitlines()[-1])
    assert (rotations[-1].seq, rotations[-1].head) == (rotated_last["seq"], rotated_last["hash"])
    rotated_first = json.loads((tmp_path / f"{LOG_NAME}.1").read_text().splitlines()[0])
    assert rotations[-1].segment == rotated_first["seq"]


def test_dropping_the_oldest_file_is_signed_as_retired_and_old_checkpoints_pruned(
    tmp_path: Path,
) -> None:
    log = AuditLog(tmp_path, max_bytes=4096, keep=2, signer=KEY)
    for i in range(120):
        log.append({"request_id": f"req_{i}", "identity": "loopback"})
    written = checkpoints(tmp_path)
    retired = [c for c in written if c.reason == "retire"]
    assert len(retired) == 1, "only the latest retirement is kept"
    oldest = json.loads((tmp_path / f"{LOG_NAME}.2").read_text().splitlines()[0])
    assert retired[0].seq == oldest["seq"] - 1
    assert all(c.seq > retired[0].seq for c in written if c.reason != "retire")
    assert verify_log(tmp_path, LOG_NAME, [KEY.public]).problems == []


def test_periodic_checkpoints_skip_an_idle_log_but_shutdown_always_signs(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, signer=KEY)
    assert log.checkpoint("periodic") is None, "an empty log has nothing to anchor"
    log.append({"request_id": "one"})
    first = log.checkpoint("periodic")
    assert first is not None
    assert first.seq == 1
    assert log.checkpoint("periodic") is None
    shutdown = log.checkpoint("shutdown")
    assert shutdown is not None
    assert (shutdown.seq, shutdown.reason) == (1, "shutdown")
    log.append({"request_id": "two"})
    assert log.checkpoint("periodic") is not None


def test_checkpoints_are_shipped_as_written(tmp_path: Path) -> None:
    shipped: list[str] = []
    log = AuditLog(tmp_path, signer=KEY, ship=shipped.append)
    log.append({"request_id": "one"})
    log.checkpoint("shutdown")
    assert shipped == checkpoints_path(tmp_path / LOG_NAME).read_text().splitlines()


def test_without_a_key_no_checkpoint_is_written(tmp_path: Path) -> None:
    log = filled(tmp_path, n=40, max_bytes=4096)
    assert log.checkpoint("shutdown") is None
    assert not checkpoints_path(tmp_path / LOG_NAME).exists()


@pytest.mark.parametrize("identity", [None, "public"])
def test_requests_that_never_authenticated_go_to_their_own_log(
    tmp_path: Path, identity: str | None
) -> None:
    trail = AuditTrail(tmp_path, max_bytes=1 << 20, unauthenticated_max_bytes=1 << 20)
    trail.append({"identity": "key:alice", "status": 200})
    trail.append({"identity": identity, "status": 401, "client": "192.0.2.7"})
    assert [r["identity"] for r in records(tmp_path)] == ["key:alice"]
    assert [r["client"] for r in records(tmp_path, UNAUTHENTICATED_NAME)] == ["192.0.2.7"]


def test_a_flood_of_refusals_leaves_authenticated_records_in_place(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path, max_bytes=8192, unauthenticated_max_bytes=4096, signer=KEY)
    for i in range(5):
        trail.append({"identity": "key:alice", "request_id": f"real_{i}", "status": 200})
    for status in (401, 403, 408, 413, 431) * 200:
        trail.append({"identity": None, "status": status, "client": "198.51.100.9"})
    trail.append({"identity": "key:alice", "request_id": "real_5", "status": 200})
    kept = [r["request_id"] for r in records(tmp_path)]
    assert kept == [f"real_{i}" for i in range(6)]
    assert not (tmp_path / f"{LOG_NAME}.1").exists(), "the flood rotated only its own file"
    noise = sorted(tmp_path.glob(f"{UNAUTHENTICATED_NAME}*"))
    assert len(noise) == 4, "the unauthenticated log rotates within its own cap (3 kept)"
    trail.checkpoint("shutdown")
    for name in (LOG_NAME, UNAUTHENTICATED_NAME):
        assert verify_log(tmp_path, name, [KEY.public]).problems == []


def seqs(directory: Path) -> list[int]:
    """Record numbers across every file, oldest first, skipping lines that are not records."""
    files = sorted(directory.glob(f"{LOG_NAME}.*"), key=lambda p: -int(p.suffix[1:]))
    numbers = []
    for path in [*files, directory / LOG_NAME]:
        for line in path.read_text().splitlines():
            entry = parse_record(line)
            if entry is not None and "hash" in entry:
                numbers.append(entry["seq"])
    return numbers


NESTED = ['{"a":' * 100_000 + "1" + "}" * 100_000, "[" * 100_000 + "]" * 100_000]


@pytest.mark.parametrize("line", NESTED, ids=["objects", "arrays"])
def test_a_deeply_nested_line_is_not_a_record_and_the_chain_goes_on(
    tmp_path: Path, line: str
) -> None:
    assert parse_record(line) is None
    filled(tmp_path, n=3)
    with (tmp_path / LOG_NAME).open("a") as handle:
        handle.write(line + "\n")
    AuditLog(tmp_path).append({"request_id": "after"})
    assert [(p.line, p.reason) for p in verify_chain(tmp_path)] == [(4, "not an audit record")]
    assert seqs(tmp_path) == [1, 2, 3, 4]


def test_a_torn_last_line_is_passed_over_and_the_next_record_starts_its_own_line(
    tmp_path: Path,
) -> None:
    """A crash mid-write leaves half a line: the next record follows the last whole one."""
    filled(tmp_path, n=4)
    path = tmp_path / LOG_NAME
    path.write_bytes(path.read_bytes()[:-30])
    AuditLog(tmp_path).append({"request_id": "after"})
    assert [(p.line, p.reason) for p in verify_chain(tmp_path)] == [(4, "not an audit record")]
    assert json.loads(lines(tmp_path)[-1])["request_id"] == "after"
    assert seqs(tmp_path) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "torn", [b"", b'{"request_id":"cut', b'{"prompt":"' + b"p" * 5000], ids=["cut", "short", "long"]
)
def test_a_torn_line_keeps_the_numbering_through_rotation_and_retirement(
    tmp_path: Path, torn: bytes
) -> None:
    """Numbers never go backwards or repeat, retirement still signs, and once the torn line's
    file is retired the log verifies clean. ``long`` crosses the size cap, so the file with
    the torn tail is rotated out before the next record."""
    log = AuditLog(tmp_path, max_bytes=4096, keep=2, signer=KEY)
    for i in range(100):
        log.append({"request_id": f"req_{i}", "identity": "loopback"})
    path = tmp_path / LOG_NAME
    path.write_bytes(path.read_bytes()[:-25] + torn)
    last = len(seqs(tmp_path)) and seqs(tmp_path)[-1]
    log = AuditLog(tmp_path, max_bytes=4096, keep=2, signer=KEY)  # a restart after the crash
    log.append({"request_id": "after-crash", "identity": "loopback"})
    assert seqs(tmp_path)[-1] == last + 1
    assert [p.reason for p in verify_log(tmp_path, LOG_NAME, [KEY.public]).problems] == [
        "not an audit record"
    ]
    for i in range(150):
        log.append({"request_id": f"later_{i}", "identity": "loopback"})
    log.checkpoint("shutdown")
    numbers = seqs(tmp_path)
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert numbers[-1] == last + 151
    assert verify_log(tmp_path, LOG_NAME, [KEY.public]).problems == []
    assert len({(c.seq, c.reason) for c in checkpoints(tmp_path)}) == len(checkpoints(tmp_path))


def test_every_record_carries_the_chain_id_its_checkpoints_sign(tmp_path: Path) -> None:
    log = filled(tmp_path, n=40, max_bytes=4096, signer=KEY)
    log.checkpoint("shutdown")
    chains = {r["chain"] for r in records(tmp_path)}
    chains |= {json.loads(line)["chain"] for line in lines(tmp_path, f"{LOG_NAME}.1")}
    assert len(chains) == 1
    assert {c.chain for c in checkpoints(tmp_path)} == chains
    other = filled(tmp_path / "other", n=1)
    assert records(other.directory)[0]["chain"] not in chains, "each chain draws its own id"


def test_a_log_from_before_chain_ids_keeps_verifying_after_the_upgrade(tmp_path: Path) -> None:
    """Its head is checkpointed with no chain id, then records carry the id they start."""
    filled(tmp_path, n=3)
    legacy = []
    for line in lines(tmp_path):
        entry = json.loads(line)
        del entry["chain"], entry["hash"]
        entry["prev"] = json.loads(legacy[-1])["hash"] if legacy else "0" * 64
        entry["hash"] = digest(entry["prev"], entry)
        legacy.append(json.dumps(entry, sort_keys=True, separators=(",", ":")))
    (tmp_path / LOG_NAME).write_text("\n".join(legacy) + "\n")
    log = AuditLog(tmp_path, max_bytes=4096, signer=KEY)
    first = log.checkpoint("periodic")
    assert first is not None
    assert (first.seq, first.chain) == (3, "")
    for i in range(60):
        log.append({"request_id": f"req_{i}", "identity": "loopback"})
    log.checkpoint("shutdown")
    assert (tmp_path / f"{LOG_NAME}.1").exists()
    assert verify_log(tmp_path, LOG_NAME, [KEY.public]).problems == []
