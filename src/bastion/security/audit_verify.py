"""Check an audit log against its hash chain and its signed checkpoints.

The chain finds an edited, inserted, deleted or reordered line. The checkpoints find what the
chain cannot: a log that starts late (first lines or the oldest file deleted), ends early
(tail dropped), or was edited and re-chained to the end. Records written after the latest
checkpoint are covered by the chain only; the report says how many.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.integrity.signing import PublicKey
from bastion.security.audit import (
    GENESIS,
    LOG_NAME,
    UNAUTHENTICATED_NAME,
    digest,
    parse_record,
    record_chain,
    record_seq,
)
from bastion.security.checkpoints import (
    Checkpoint,
    CheckpointError,
    checkpoints_path,
    read_lines,
)

LOGS = (LOG_NAME, UNAUTHENTICATED_NAME)


@dataclass(frozen=True)
class ChainProblem:
    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.reason}"


@dataclass
class _Walk:
    problems: list[ChainProblem] = field(default_factory=list)
    count: int = 0
    first: tuple[int | None, str, str] | None = None
    """(seq, prev, file name) of the first record."""
    last: int = 0
    chain: str | None = None
    """The chain id the records carry; None while they predate chain ids."""
    unchained: int = 0
    """Number of the last record written before chain ids."""
    found: dict[int, tuple[str, str, int, int]] = field(default_factory=dict)
    """seq -> (hash, file, line, the file's first seq) for the records a checkpoint names."""


@dataclass
class LogReport:
    log: str
    problems: list[ChainProblem]
    notes: list[str]
    records: int
    last: int
    anchored: int
    """Highest record number a valid checkpoint covers."""


def files_oldest_first(directory: Path, name: str = LOG_NAME) -> list[Path]:
    rotated = [p for p in directory.glob(f"{name}.*") if p.suffix[1:].isdigit()]
    rotated.sort(key=lambda p: int(p.suffix[1:]), reverse=True)
    current = directory / name
    return [*rotated, *([current] if current.exists() else [])]


def _walk(directory: Path, name: str, wanted: set[int]) -> _Walk:
    walk = _Walk()
    prev: str | None = None
    for path in files_oldest_first(directory, name):
        segment: int | None = None
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                entry = parse_record(raw.rstrip(b"\n"))
                claimed = entry.pop("hash", None) if entry is not None else None
                computed = _digest(entry) if entry is not None else None
                if entry is None or not isinstance(claimed, str) or computed is None:
                    walk.problems.append(ChainProblem(path.name, number, "not an audit record"))
                    prev = None
                    continue
                if segment is None:  # as the writer signs it: the file's first record's seq
                    segment = record_seq(entry) or 0
                seq = record_seq(entry)
                if seq is None:  # written before records were numbered
                    seq = walk.last + 1
                _check_chain(walk, entry, seq, path.name, number)
                if walk.first is None:
                    walk.first = (record_seq(entry), str(entry.get("prev")), path.name)
                elif prev is not None and entry.get("prev") != prev:
                    walk.problems.append(
                        ChainProblem(
                            path.name,
                            number,
                            "does not follow the previous line (a line was "
                            "deleted, inserted or reordered)",
                        )
                    )
                elif prev is not None and seq != walk.last + 1:
                    walk.problems.append(
                        ChainProblem(path.name, number, f"numbered {seq}, expected {walk.last + 1}")
                    )
                if computed != claimed:
                    walk.problems.append(ChainProblem(path.name, number, "edited (hash mismatch)"))
                if seq in wanted:
                    walk.found[seq] = (claimed, path.name, number, segment)
                walk.count += 1
                walk.last = seq
                prev = claimed
    return walk


def _digest(entry: dict[str, Any]) -> str | None:
    try:
        return digest(str(entry.get("prev")), entry)
    except RecursionError:  # nested just under the parser's limit, over the encoder's
        return None


def _check_chain(walk: _Walk, entry: dict[str, Any], seq: int, file: str, line: int) -> None:
    """Every record carries the chain id of the first that has one (before it: records from
    before chain ids)."""
    chain = record_chain(entry)
    if chain is None and walk.chain is None:
        walk.unchained = seq
    elif walk.chain is None:
        walk.chain = chain
    elif chain != walk.chain:
        walk.problems.append(
            ChainProblem(
                file, line, "belongs to another chain than the records before it (spliced in)"
            )
        )


def verify_chain(directory: Path, name: str = LOG_NAME) -> list[ChainProblem]:
    """Every break in the chain across rotated files; empty when intact."""
    return _walk(directory, name, set()).problems


def read_checkpoints(
    path: Path, keys: list[PublicKey]
) -> tuple[list[Checkpoint], list[ChainProblem]]:
    """The checkpoints in ``path`` that ``keys`` signed, and a problem for every other line."""
    numbered, problems = _read_numbered(path, keys)
    return [checkpoint for _, checkpoint in numbered], problems


def _read_numbered(
    path: Path, keys: list[PublicKey]
) -> tuple[list[tuple[int, Checkpoint]], list[ChainProblem]]:
    valid: list[tuple[int, Checkpoint]] = []
    problems: list[ChainProblem] = []
    for number, line in read_lines(path):
        try:
            checkpoint = Checkpoint.parse(line)
            checkpoint.check(keys)
        except CheckpointError as exc:
            problems.append(ChainProblem(path.name, number, f"checkpoint rejected: {exc}"))
            continue
        valid.append((number, checkpoint))
    return valid, problems


def verify_log(
    directory: Path,
    name: str,
    keys: list[PublicKey],
    external: list[Checkpoint] | None = None,
) -> LogReport:
    """``name``'s chain, then every valid checkpoint against it (``external``: checkpoints
    obtained elsewhere, already checked against ``keys``)."""
    local_path = checkpoints_path(directory / name)
    numbered, problems = _read_numbered(local_path, keys) if local_path.is_file() else ([], [])
    given = [c for c in external or [] if c.log == name]
    walk = _walk(directory, name, {c.seq for _, c in numbered} | {c.seq for c in given})
    problems += walk.problems
    # The first record's number; records from before numbering start the chain.
    start = (walk.first[0] or 1) if walk.first else None
    unchained = max(walk.unchained, (start or 1) - 1)
    local: list[Checkpoint] = []
    for number, checkpoint in numbered:
        if checkpoint.log != name:
            problems.append(
                ChainProblem(
                    local_path.name,
                    number,
                    f"a checkpoint of {checkpoint.log} (signed at {checkpoint.time}, "
                    f"{checkpoint.reason}): copied in from another log's checkpoints",
                )
            )
        elif not _of_chain(checkpoint, walk, unchained):
            problems.append(
                ChainProblem(
                    local_path.name, number, f"the checkpoint {_FOREIGN.format(c=checkpoint)}"
                )
            )
        else:
            local.append(checkpoint)
    ours = [c for c in given if _of_chain(c, walk, unchained)]
    problems += [
        ChainProblem(name, None, f"the checkpoint given from elsewhere {_FOREIGN.format(c=c)}")
        for c in given
        if c not in ours
    ]
    valid = local + ours
    retired = max((c for c in valid if c.reason == "retire"), key=lambda c: c.seq, default=None)
    gone = retired.seq if retired else 0
    notes: list[str] = []
    if walk.first is not None:
        problems += _check_start(walk.first, retired)
    beyond = max((c for c in valid if c.seq > walk.last), key=lambda c: c.seq, default=None)
    if beyond is not None:
        problems.append(
            ChainProblem(
                name,
                None,
                f"the log ends at record {walk.last} but the checkpoint signed at {beyond.time} "
                f"({beyond.reason}) counted {beyond.seq}: records {walk.last + 1}..{beyond.seq} "
                "were removed",
            )
        )
    for checkpoint in sorted(valid, key=lambda c: c.seq):
        # Beyond the end: reported as removed. Before the start: _check_start held the first
        # record to the retirement, or reported the missing ones. A retirement whose record
        # is still on disk is checked against it here, like any other checkpoint.
        if start is None or not start <= checkpoint.seq <= walk.last:
            continue
        found = walk.found.get(checkpoint.seq)
        if found is None or found[0] != checkpoint.head:
            problems.append(
                ChainProblem(
                    found[1] if found else name,
                    found[2] if found else None,
                    f"record {checkpoint.seq} is not the one the checkpoint signed at "
                    f"{checkpoint.time} ({checkpoint.reason}) names: the log was edited and "
                    "re-chained, or replaced",
                )
            )
        elif checkpoint.segment != found[3]:
            problems.append(
                ChainProblem(
                    found[1],
                    found[2],
                    f"record {checkpoint.seq} is in a file that begins at record {found[3]}, "
                    f"but the checkpoint signed at {checkpoint.time} ({checkpoint.reason}) "
                    f"says its file began at {checkpoint.segment}: the rotated files were "
                    "split or joined",
                )
            )
    if given and not local_path.is_file():
        problems.append(
            ChainProblem(
                local_path.name,
                None,
                f"missing (deleted), though {len(given)} checkpoints given from elsewhere "
                "show the server wrote it",
            )
        )
    for checkpoint in ours if local_path.is_file() else []:
        if checkpoint not in local and checkpoint.seq > gone:
            problems.append(
                ChainProblem(
                    local_path.name,
                    None,
                    f"the checkpoint signed at {checkpoint.time} (record {checkpoint.seq}) is "
                    "missing from the local checkpoints file (deleted)",
                )
            )
    anchored = max((c.seq for c in valid), default=0)
    if walk.count and not valid and len(files_oldest_first(directory, name)) > 1:
        problems.append(
            ChainProblem(
                local_path.name,
                None,
                "UNVERIFIABLE: no valid signed checkpoint although the log has rotated, which "
                "always writes one (the file was deleted, emptied or forged): the log's length "
                "cannot be checked",
            )
        )
    elif walk.count and not valid:
        notes.append(
            f"UNVERIFIED: no valid signed checkpoint, so records 1..{walk.last} are covered by "
            "the hash chain only and the log's length cannot be checked: the checkpoints file "
            "was deleted, or the server has not written one yet (it does every "
            "audit.checkpoint_interval seconds and at shutdown)"
        )
    elif walk.last > anchored:
        latest = max(valid, key=lambda c: c.seq)
        notes.append(
            f"records {anchored + 1}..{walk.last} were written after the latest checkpoint "
            f"({latest.time}): only the hash chain covers them, so someone with disk access "
            "could drop or rewrite them undetected unless checkpoints are shipped off the box"
        )
    return LogReport(name, problems, notes, walk.count, walk.last, anchored)


_FOREIGN = (
    "signed at {c.time} ({c.reason}, record {c.seq}) is for another chain than this log's "
    "records: it comes from another server's log, or the log was replaced"
)


def _of_chain(checkpoint: Checkpoint, walk: _Walk, unchained: int) -> bool:
    """Whether ``checkpoint`` anchors the chain on disk. Records from before chain ids (up to
    ``unchained``) were checkpointed with none."""
    if walk.count == 0 or checkpoint.chain == (walk.chain or ""):
        return True
    return checkpoint.chain == "" and checkpoint.seq <= unchained


def _check_start(
    first: tuple[int | None, str, str], retired: Checkpoint | None
) -> list[ChainProblem]:
    """The log must begin at the chain's genesis, or right after what rotation retired."""
    seq, prev, file = first
    gone = retired.seq if retired else 0
    if seq is not None and seq > gone + 1:
        why = (
            "no signed checkpoint says they were rotated away"
            if retired is None
            else f"rotation retired only records up to {gone}"
        )
        return [
            ChainProblem(
                file,
                1,
                f"the log starts at record {seq}: records {gone + 1}..{seq - 1} are "
                f"missing ({why})",
            )
        ]
    expected = retired.head if retired else GENESIS
    if (seq is None or seq == gone + 1) and prev != expected:
        after = "the chain's start" if retired is None else f"record {gone}, the last retired"
        return [
            ChainProblem(file, 1, f"the first record does not follow {after}: records are missing")
        ]
    return []


def verify_home(
    directory: Path, keys: list[PublicKey], external: list[Checkpoint] | None = None
) -> list[LogReport]:
    """Every audit log in ``directory`` that has records or checkpoints."""
    reports = []
    for name in LOGS:
        present = files_oldest_first(directory, name) or checkpoints_path(directory / name).exists()
        given = [c for c in external or [] if c.log == name]
        if present or given:
            reports.append(verify_log(directory, name, keys, external))
    return reports
