"""Slot choice: the longest cached prefix wins; ties go to the slot that keeps the busy slots'
sequence ids consecutive (one llama.cpp pass per step), then to the least recently used."""

from __future__ import annotations

from bastion.engine.llamacpp.scheduler import (
    COPY_MIN_GAIN,
    Slot,
    choose_slot,
    common_prefix,
    prefix_donor,
    runs,
)


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2


def test_picks_the_idle_slot_holding_the_longest_prefix() -> None:
    slots = [Slot(0, [1, 2], last_used=1), Slot(1, [1, 2, 3, 4], last_used=2), Slot(2)]
    slot, keep = choose_slot(slots, [1, 2, 3, 4, 5, 6])  # type: ignore[misc]
    assert slot.seq_id == 1
    assert keep == 4


def test_the_last_prompt_token_is_always_recomputed() -> None:
    slots = [Slot(0, [7, 8, 9])]
    assert choose_slot(slots, [7, 8, 9]) == (slots[0], 2)


def test_busy_slots_are_never_chosen_and_ties_go_to_the_least_recently_used() -> None:
    slots = [Slot(0, [5], last_used=9), Slot(1, [1, 2, 3], busy=True), Slot(2, [6], last_used=3)]
    slot, keep = choose_slot(slots, [1, 2, 3, 4])  # type: ignore[misc]
    assert (slot.seq_id, keep) == (2, 0)


def test_runs_counts_the_passes_of_a_step() -> None:
    assert runs(set()) == 0
    assert runs({0, 1, 2, 3}) == 1
    assert runs({0, 2, 3}) == 2
    assert runs({3, 1}) == 2


def test_ties_fill_the_gap_between_busy_slots_before_the_least_recently_used() -> None:
    slots = [
        Slot(0, busy=True),
        Slot(1, [7], last_used=9),
        Slot(2, busy=True),
        Slot(3, [8], last_used=1),
    ]
    assert choose_slot(slots, [1, 2, 3]) == (slots[1], 0)
    assert choose_slot(slots, [1, 2, 3], reuse=False) == (slots[1], 0)


def test_a_longer_prefix_still_beats_keeping_the_busy_slots_together() -> None:
    slots = [Slot(0, busy=True), Slot(1, [9], last_used=9), Slot(2, [1, 2, 3], last_used=1)]
    assert choose_slot(slots, [1, 2, 3, 4]) == (slots[2], 3)


def test_none_when_every_slot_is_busy() -> None:
    assert choose_slot([Slot(0, busy=True)], [1, 2]) is None


def test_reuse_off_never_keeps_cached_tokens() -> None:
    slots = [Slot(0, [1, 2, 3], last_used=5), Slot(1, [9], last_used=1)]
    assert choose_slot(slots, [1, 2, 3, 4], reuse=False) == (slots[1], 0)


def test_a_busy_slot_with_a_much_longer_prefix_donates_it() -> None:
    shared = list(range(100))
    target = Slot(0, [7])
    donor = Slot(1, [*shared, 555], busy=True)
    slots = [target, donor, Slot(2, shared[:10], busy=True)]
    assert prefix_donor(slots, target, [*shared, 1, 2], keep=0) == (donor, 100)


def test_no_donor_for_a_small_gain_or_from_idle_slots() -> None:
    prompt = list(range(100))
    target = Slot(0, prompt[:80])
    near = Slot(1, prompt, busy=True)  # 99 - 80 tokens of gain: not worth a stream copy
    assert prefix_donor([target, near], target, prompt, keep=80) is None
    idle = Slot(2, prompt)
    assert prefix_donor([Slot(3), idle], Slot(3), prompt, keep=0) is None
    assert COPY_MIN_GAIN > 99 - 80
