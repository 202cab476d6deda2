"""Tampering the hash chain alone cannot catch, caught by the signed checkpoints: each member
is either reported (a problem naming what is wrong) or explicitly called unverifiable."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bastion.integrity.signing import SecretKey
from bastion.security.audit import GENESIS, LOG_NAME, UNAUTHENTICATED_NAME, AuditLog, digest
from bastion.security.audit_verify import LogReport, read_checkpoints, verify_home, verify_log
from bastion.security.checkpoints import Checkpoint, checkpoints_path

KEY = SecretKey.generate()
OTHER = SecretKey.generate()


def write(directory: Path, n: int, *, start: int = 0) -> AuditLog:
    log = AuditLog(directory, max_bytes=4096, keep=10, signer=KEY)
    for i in range(start, start + n):
        log.append({"request_id": f"req_{i}", "identity": "key:alice", "status": 200})
    return log


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    """Three files of records (two rotated), anchored by a checkpoint at the end."""
    log = write(tmp_path, 60)
    assert (tmp_path / f"{LOG_NAME}.2").exists()
    assert log.checkpoint("shutdown") is not None
    return tmp_path


def check(directory: Path, *external: Checkpoint) -> LogReport:
    return verify_log(directory, LOG_NAME, [KEY.public], list(external))


def reasons(report: LogReport) -> str:
    return "\n".join(str(p) for p in report.problems)


def file_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def put(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def rechain(directory: Path, edit: int) -> None:
    """Change record ``edit`` and recompute every hash after it, across files."""
    files = sorted(directory.glob(f"{LOG_NAME}.*"), key=lambda p: -int(p.suffix[1:]))
    prev = GENESIS
    for path in [*files, directory / LOG_NAME]:
        out = []
        for line in file_lines(path):
            entry = json.loads(line)
            del entry["hash"]
            if entry["seq"] == edit:
                entry["identity"] = "key:mallory"
            entry["prev"] = prev
            entry["hash"] = prev = digest(prev, entry)
            out.append(json.dumps(entry, sort_keys=True, separators=(",", ":")))
        put(path, out)


def test_an_untouched_anchored_log_verifies(audit: Path) -> None:
    report = check(audit)
    assert report.problems == []
    assert (report.records, report.anchored) == (60, 60)
    assert report.notes == []


@pytest.mark.parametrize("deleted", [1, 2, 7])
def test_deleting_the_first_lines_is_reported(audit: Path, deleted: int) -> None:
    oldest = max(audit.glob(f"{LOG_NAME}.*"), key=lambda p: int(p.suffix[1:]))
    put(oldest, file_lines(oldest)[deleted:])
    assert verify_log(audit, LOG_NAME, [KEY.public]).problems
    assert f"records 1..{deleted} are missing" in reasons(check(audit))


def test_deleting_the_oldest_file_is_reported_as_a_missing_first_segment(audit: Path) -> None:
    oldest = max(audit.glob(f"{LOG_NAME}.*"), key=lambda p: int(p.suffix[1:]))
    count = len(file_lines(oldest))
    oldest.unlink()
    assert f"records 1..{count} are missing" in reasons(check(audit))


def test_files_that_rotation_dropped_are_not_reported(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, max_bytes=4096, keep=2, signer=KEY)
    for i in range(150):
        log.append({"request_id": f"req_{i}", "identity": "key:alice"})
    log.checkpoint("shutdown")
    assert check(tmp_path).problems == []


def test_deleting_a_file_after_retirement_is_still_reported(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, max_bytes=4096, keep=3, signer=KEY)
    for i in range(150):
        log.append({"request_id": f"req_{i}", "identity": "key:alice"})
    log.checkpoint("shutdown")
    (tmp_path / f"{LOG_NAME}.3").unlink()
    assert "are missing (rotation retired only records up to" in reasons(check(tmp_path))


@pytest.mark.parametrize("dropped", [1, 5, 30])
def test_dropping_the_tail_is_reported(audit: Path, dropped: int) -> None:
    current = audit / LOG_NAME
    kept = file_lines(current)
    put(current, kept[: len(kept) - dropped] if dropped < len(kept) else [])
    if dropped >= len(kept):
        current.unlink()
        (audit / f"{LOG_NAME}.1").unlink()
    assert "were removed" in reasons(check(audit))


def test_a_tail_cut_mid_line_is_reported(audit: Path) -> None:
    current = audit / LOG_NAME
    current.write_bytes(current.read_bytes()[:-20])
    assert "not an audit record" in reasons(check(audit))


def test_records_after_the_latest_checkpoint_are_named_as_unprotected(audit: Path) -> None:
    """The limit of local checkpoints: what came after the last one can vanish unnoticed."""
    write(audit, 4, start=60)
    current = audit / LOG_NAME
    put(current, file_lines(current)[:-4])
    assert check(audit).problems == []
    write(audit, 4, start=60)
    report = check(audit)
    assert report.problems == []
    assert any("records 61..64" in note and "shipped off the box" in note for note in report.notes)


@pytest.mark.parametrize("edited", [1, 30, 60])
def test_editing_a_line_and_recomputing_the_chain_is_reported(audit: Path, edited: int) -> None:
    rechain(audit, edited)
    assert verify_log(audit, LOG_NAME, []).problems, "no key: nothing verifies"
    problems = reasons(check(audit))
    assert "record 60 is not the one the checkpoint" in problems
    assert "re-chained" in problems


def test_swapping_rotated_files_is_reported(audit: Path) -> None:
    first, second = audit / f"{LOG_NAME}.1", audit / f"{LOG_NAME}.2"
    first_text = first.read_text()
    first.write_text(second.read_text())
    second.write_text(first_text)
    problems = reasons(check(audit))
    assert "does not follow the previous line" in problems


def test_a_checkpoint_forged_with_another_key_is_rejected(audit: Path) -> None:
    """Re-chain, then sign the new head with a key that is not the server's."""
    rechain(audit, 10)
    path = checkpoints_path(audit / LOG_NAME)
    last = json.loads(file_lines(audit / LOG_NAME)[-1])
    forged = Checkpoint(
        LOG_NAME,
        last["chain"],
        1,
        last["seq"],
        last["hash"],
        "2026-01-01T00:00:00+00:00",
        "shutdown",
    )
    put(path, [forged.signed(OTHER).line()])
    problems = reasons(check(audit))
    assert "not the server key" in problems
    assert "UNVERIFIABLE" in problems


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 61},
        {"seq": 59},
        {"head": "f" * 64},
        {"reason": "retire"},
        {"log": "x"},
        {"chain": "f" * 16},
        {"segment": 2},
    ],
)
def test_a_checkpoint_edited_after_signing_is_rejected(
    audit: Path, change: dict[str, object]
) -> None:
    path = checkpoints_path(audit / LOG_NAME)
    signed = Checkpoint.parse(file_lines(path)[-1])
    put(path, [*file_lines(path), replace(signed, **change).line()])  # type: ignore[arg-type]
    assert "forged" in reasons(check(audit))


def test_a_deleted_checkpoints_file_is_reported_as_unverifiable(audit: Path) -> None:
    """Rotation always signs: a rotated log without checkpoints lost them."""
    checkpoints_path(audit / LOG_NAME).unlink()
    problems = reasons(check(audit))
    assert "UNVERIFIABLE" in problems
    assert "length cannot be checked" in problems


def test_without_rotation_a_missing_checkpoints_file_is_named_unverified(tmp_path: Path) -> None:
    """It may be a server that has not checkpointed yet; the report says the length is
    unchecked rather than calling the log complete."""
    write(tmp_path, 5).checkpoint("shutdown")
    checkpoints_path(tmp_path / LOG_NAME).unlink()
    report = check(tmp_path)
    assert report.problems == []
    assert report.anchored == 0
    assert any(note.startswith("UNVERIFIED") and "1..5" in note for note in report.notes)
    put(tmp_path / LOG_NAME, file_lines(tmp_path / LOG_NAME)[1:])
    assert "records 1..1 are missing" in reasons(check(tmp_path)), "the start is still checked"


def test_a_checkpoint_kept_elsewhere_anchors_a_log_whose_checkpoints_were_deleted(
    audit: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    shipped = tmp_path_factory.mktemp("syslog") / "messages"
    lines = file_lines(checkpoints_path(audit / LOG_NAME))
    put(shipped, [f"Nov 25 13:00:00 box bastion-audit-checkpoint: {line}" for line in lines])
    external, rejected = read_checkpoints(shipped, [KEY.public])
    assert rejected == []
    assert external
    checkpoints_path(audit / LOG_NAME).unlink()
    current = audit / LOG_NAME
    put(current, file_lines(current)[:-3])
    report = check(audit, *external)
    assert "records 58..60 were removed" in reasons(report)
    assert "audit.checkpoints.jsonl: missing (deleted)" in reasons(report)


def test_a_checkpoint_kept_elsewhere_finds_local_checkpoints_that_were_deleted(
    audit: Path,
) -> None:
    """Drop the tail and the checkpoints that counted it: only the copy elsewhere knows."""
    path = checkpoints_path(audit / LOG_NAME)
    external = [Checkpoint.parse(line) for line in file_lines(path)]
    write(audit, 5, start=60)
    AuditLog(audit, signer=KEY).checkpoint("periodic")
    external.append(Checkpoint.parse(file_lines(path)[-1]))
    put(path, file_lines(path)[:-1])
    current = audit / LOG_NAME
    put(current, file_lines(current)[:-5])
    assert check(audit).problems == [], "locally, the shortened log looks complete"
    problems = reasons(check(audit, *external))
    assert "records 61..65 were removed" in problems
    assert "missing from the local checkpoints file" in problems


def test_the_unauthenticated_log_is_checked_with_its_own_checkpoints(tmp_path: Path) -> None:
    noise = AuditLog(tmp_path, name=UNAUTHENTICATED_NAME, max_bytes=4096, keep=3, signer=KEY)
    for _ in range(100):
        noise.append({"identity": None, "status": 401, "client": "198.51.100.9"})
    noise.checkpoint("shutdown")
    write(tmp_path, 3).checkpoint("shutdown")
    assert [r.problems for r in verify_home(tmp_path, [KEY.public])] == [[], []]
    current = tmp_path / UNAUTHENTICATED_NAME
    put(current, file_lines(current)[:-2])
    main, refused = verify_home(tmp_path, [KEY.public])
    assert main.problems == []
    assert "were removed" in reasons(refused)


def test_a_checkpoint_kept_elsewhere_finds_a_deleted_audit_directory(audit: Path) -> None:
    external = [Checkpoint.parse(line) for line in file_lines(checkpoints_path(audit / LOG_NAME))]
    for path in audit.iterdir():
        path.unlink()
    assert verify_home(audit, [KEY.public]) == [], "locally there is nothing left to check"
    (report,) = verify_home(audit, [KEY.public], external)
    assert "records 1..60 were removed" in reasons(report)


def retiring(directory: Path, name: str = LOG_NAME, *, prefix: str = "req", n: int = 150) -> int:
    """A log with keep=2 written until it has retired records; the last retired number."""
    log = AuditLog(directory, name=name, max_bytes=4096, keep=2, signer=KEY)
    for i in range(n):
        log.append({"request_id": f"{prefix}_{i}", "identity": "key:alice"})
    log.checkpoint("shutdown")
    path = checkpoints_path(directory / name)
    return max(c.seq for c in map(Checkpoint.parse, file_lines(path)) if c.reason == "retire")


def retire_line(directory: Path, name: str = LOG_NAME) -> str:
    path = checkpoints_path(directory / name)
    return next(line for line in file_lines(path) if Checkpoint.parse(line).reason == "retire")


def drop_oldest(directory: Path) -> None:
    max(directory.glob(f"{LOG_NAME}.*"), key=lambda p: int(p.suffix[1:])).unlink()


@pytest.mark.parametrize("source", ["unauthenticated log", "another server", "another home"])
def test_a_retire_line_copied_from_another_chain_does_not_excuse_deleted_records(
    audit: Path, tmp_path_factory: pytest.TempPathFactory, source: str
) -> None:
    """The oldest file is deleted and a real, server-signed ``retire`` line from elsewhere
    is copied in to claim rotation dropped it."""
    if source == "unauthenticated log":
        retiring(audit, UNAUTHENTICATED_NAME, n=400)
        line = retire_line(audit, UNAUTHENTICATED_NAME)
    else:  # another server sharing the key, with this log's name ("another home": copied
        # back under another name is no different)
        other = tmp_path_factory.mktemp("other")
        retiring(other, n=400)
        line = retire_line(other)
    drop_oldest(audit)
    path = checkpoints_path(audit / LOG_NAME)
    put(path, [*file_lines(path), line])
    problems = reasons(check(audit))
    assert "are missing (no signed checkpoint says they were rotated away)" in problems
    expected = "copied in from another log" if source == "unauthenticated log" else "another chain"
    assert expected in problems


def test_a_retire_line_from_a_copy_of_this_home_must_match_the_record_it_names(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A copy of BASTION_HOME carries the same chain id: after the two diverge, the copy's
    retirement names a record this log still holds, with another hash."""
    home, twin = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("twin")
    write(home, 10)
    for path in home.iterdir():
        (twin / path.name).write_bytes(path.read_bytes())
    gone = retiring(twin, prefix="twin", n=110)
    write(home, 140, start=10)
    AuditLog(home, signer=KEY).checkpoint("shutdown")
    drop_oldest(home)
    first = json.loads(
        file_lines(max(home.glob(f"{LOG_NAME}.*"), key=lambda p: int(p.suffix[1:])))[0]
    )
    assert 10 < first["seq"] <= gone < 150, "the copy retired records this log still holds"
    path = checkpoints_path(home / LOG_NAME)
    put(path, [*file_lines(path), retire_line(twin)])
    assert f"record {gone} is not the one the checkpoint" in reasons(check(home))


def test_a_checkpoint_of_another_log_in_the_checkpoints_file_is_reported(audit: Path) -> None:
    noise = AuditLog(audit, name=UNAUTHENTICATED_NAME, signer=KEY)
    noise.append({"identity": None, "status": 401})
    noise.checkpoint("shutdown")
    path = checkpoints_path(audit / LOG_NAME)
    put(path, [*file_lines(path), *file_lines(checkpoints_path(audit / UNAUTHENTICATED_NAME))])
    assert "copied in from another log's checkpoints" in reasons(check(audit))


def test_a_log_replaced_with_its_checkpoints_is_caught_by_a_copy_kept_elsewhere(
    audit: Path,
) -> None:
    """Everything deleted and a fresh chain written and checkpointed in its place."""
    external = [Checkpoint.parse(line) for line in file_lines(checkpoints_path(audit / LOG_NAME))]
    for path in audit.iterdir():
        path.unlink()
    write(audit, 60).checkpoint("shutdown")
    assert check(audit).problems == [], "locally the new chain vouches for itself"
    problems = reasons(check(audit, *external))
    assert "given from elsewhere signed at" in problems
    assert "is for another chain" in problems


@pytest.mark.parametrize("how", ["join", "split"])
def test_rotated_files_joined_or_split_are_reported(audit: Path, how: str) -> None:
    """The chain runs on unbroken; the checkpoints name the file each head was rotated in."""
    one, two = audit / f"{LOG_NAME}.1", audit / f"{LOG_NAME}.2"
    if how == "join":
        two.write_text(two.read_text() + one.read_text())
        one.unlink()
    else:
        for path in sorted(audit.glob(f"{LOG_NAME}.*"), key=lambda p: -int(p.suffix[1:])):
            path.replace(audit / f"{LOG_NAME}.{int(path.suffix[1:]) + 1}")
        content = file_lines(audit / f"{LOG_NAME}.2")
        put(two, content[:10])
        put(one, content[10:])
    assert "the rotated files were split or joined" in reasons(check(audit))


def test_a_record_from_another_chain_is_reported(audit: Path) -> None:
    """Re-chained to hide the splice: the chain id still gives it away."""
    current = audit / LOG_NAME
    content = file_lines(current)
    entry = json.loads(content[-1])
    entry["chain"] = "0" * 16
    del entry["hash"]
    entry["hash"] = digest(entry["prev"], entry)
    put(current, [*content[:-1], json.dumps(entry, sort_keys=True, separators=(",", ":"))])
    assert "belongs to another chain" in reasons(check(audit))


@pytest.mark.parametrize(
    "line",
    [
        '{"signature":5}',
        '{"log":' * 100_000 + "1" + "}" * 100_000,
        '{"a":' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
)
def test_a_malformed_line_in_a_checkpoints_file_is_reported_not_a_crash(
    audit: Path, line: str
) -> None:
    path = checkpoints_path(audit / LOG_NAME)
    put(path, [*file_lines(path), line])
    (problem,) = check(audit).problems
    assert problem.line == len(file_lines(path))
    assert problem.reason.startswith("checkpoint rejected: not a checkpoint line")
