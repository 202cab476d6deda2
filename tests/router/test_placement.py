"""Making room: least recently used idle models first; busy ones only when allowed."""

from __future__ import annotations

from bastion.router.placement import Limits, Resident, make_room


def r(name: str, last_used: float, memory: int = 10, *, busy: bool = False) -> Resident:
    return Resident(name, memory, last_used, busy)


def test_nothing_goes_when_it_fits() -> None:
    assert make_room([r("a", 1)], 10, Limits(max_loaded=2)) == []
    assert make_room([r("a", 1)], 10, Limits()) == []


def test_least_recently_used_idle_first_and_busy_never_by_default() -> None:
    residents = [r("a", 3), r("b", 1, busy=True), r("c", 2)]
    assert make_room(residents, 10, Limits(max_loaded=3)) == ["c"]
    assert make_room(residents, 10, Limits(max_loaded=1)) is None
    assert make_room(residents, 10, Limits(max_loaded=1), take_busy=True) == ["c", "a", "b"]


def test_memory_frees_as_many_as_needed_and_refuses_what_cannot_fit() -> None:
    residents = [r("a", 1, 40), r("b", 2, 40)]
    assert make_room(residents, 30, Limits(max_memory=100)) == ["a"]
    assert make_room(residents, 70, Limits(max_memory=100)) == ["a", "b"]
    assert make_room(residents, 101, Limits(max_memory=100)) is None


def test_a_model_that_is_loading_cannot_be_chosen() -> None:
    loading = Resident("a", 10, 0, busy=False, movable=False)
    assert make_room([loading], 10, Limits(max_loaded=1)) is None
