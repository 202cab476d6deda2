"""The app's lifespan: periodic audit checkpoints that survive any failure, and a shutdown
that closes the checkpoint shipper even when the last checkpoint cannot be written."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from bastion.api.app import _checkpoint_every
from bastion.security.audit import AuditTrail
from bastion.security.checkpoint_ship import CheckpointShipper
from tests.api.stub_app import running_app


class FailingTrail:
    """Fails its first checkpoints in different ways, then records the rest."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.signed = 0
        self.two_signed = threading.Event()

    def checkpoint(self, reason: str) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.signed += 1
        if self.signed == 2:
            self.two_signed.set()


FAILURES = [
    OSError(28, "No space left on device"),
    ValueError("bad\nCRITICAL forged \x1b[31mline"),
    RuntimeError("signer unavailable"),
    KeyError("key"),
]


def test_periodic_checkpoints_go_on_after_any_failure(caplog: pytest.LogCaptureFixture) -> None:
    trail = FailingTrail(list(FAILURES))

    async def run() -> None:
        task = asyncio.create_task(_checkpoint_every(trail, 0))  # type: ignore[arg-type]
        assert await asyncio.to_thread(trail.two_signed.wait, 15)
        task.cancel()

    with caplog.at_level(logging.ERROR):
        asyncio.run(run())
    failed = [r.getMessage() for r in caplog.records if "audit checkpoint failed" in r.getMessage()]
    assert len(failed) == len(FAILURES)
    assert "audit checkpoint failed: bad\\nCRITICAL forged \\x1b[31mline" in failed
    assert not any("\n" in line or "\x1b" in line for line in failed)


def test_the_shipper_is_closed_when_the_shutdown_checkpoint_fails(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[bool] = []
    original_close = CheckpointShipper.close

    def close(self: CheckpointShipper) -> None:
        closed.append(True)
        original_close(self)

    def checkpoint(self: AuditTrail, reason: str) -> None:
        if reason == "shutdown":
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(CheckpointShipper, "close", close)
    monkeypatch.setattr(AuditTrail, "checkpoint", checkpoint)

    async def run() -> None:
        async with running_app(home):
            pass

    with pytest.raises(OSError, match="No space left"):
        asyncio.run(run())
    assert closed == [True]
