"""Interleaved requests for two models that cannot both be loaded: grouped into few swaps."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests.fakes import FakeBehaviour
from tests.router.helpers import Fleet, ask, registry, run


def test_interleaved_requests_all_succeed_with_far_fewer_swaps_than_requests(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bastion.router")

    async def scenario() -> list[str]:
        slow = FakeBehaviour(token_delay=0.01, load_delay=0.05)
        fleet = Fleet({"a": slow, "b": slow})
        async with registry(
            tmp_path, ["a", "b"], fleet, max_loaded=1, swap_after=0.2, preload=["a"]
        ) as reg:
            names = ["a", "b"] * 10
            # each a request outlasts swap_after: a is still busy when b's turn comes
            answers = await asyncio.gather(*(ask(reg, name, words=30) for name in names))
            assert all(a.split() == ["ok"] * 30 for a in answers)
            # every request was answered by the model it asked for
            for name in ("a", "b"):
                assert sum(e.generated for e in fleet.of(name)) == 10
            assert 1 <= reg.swaps <= 3
            return [r.getMessage() for r in caplog.records if "swapping" in r.getMessage()]

    swaps = run(scenario)
    assert swaps
    assert "swapping a out for b: 10 waiting for b, a drained" in swaps[0]


def test_requests_arriving_in_turns_keep_swapping_in_groups(tmp_path: Path) -> None:
    """Waves of requests for one model then the other: one swap per wave, not per request."""

    async def scenario() -> None:
        fleet = Fleet({"a": FakeBehaviour(token_delay=0.005), "b": FakeBehaviour()})
        async with registry(
            tmp_path, ["a", "b"], fleet, max_loaded=1, swap_after=0.05, preload=["a"]
        ) as reg:
            for wave in range(4):
                name = "b" if wave % 2 == 0 else "a"
                answers = await asyncio.gather(*(ask(reg, name) for _ in range(5)))
                assert answers == ["ok"] * 5
            assert reg.swaps == 4

    run(scenario)
