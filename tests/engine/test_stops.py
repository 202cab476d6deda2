"""The stop buffer: stop sequences end output and are never emitted, even when split."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from bastion.engine.stops import StopBuffer, Utf8Stream


def feed(buffer: StopBuffer, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, hit = buffer.push(piece)
        out.append(text)
        if hit:
            return "".join(out), True
    out.append(buffer.flush())
    return "".join(out), False


def test_stop_split_across_two_pieces_stops_and_is_not_emitted() -> None:
    text, hit = feed(StopBuffer(["END"]), ["Hello E", "ND and more"])
    assert (text, hit) == ("Hello ", True)


def test_partial_prefix_is_held_then_released_when_it_diverges() -> None:
    buffer = StopBuffer(["STOP"])
    assert buffer.push("ab ST") == ("ab ", False)
    assert buffer.push("ART") == ("START", False)


def test_held_text_is_flushed_when_generation_ends_otherwise() -> None:
    buffer = StopBuffer(["\n\n"])
    assert buffer.push("line\n") == ("line", False)
    assert buffer.flush() == "\n"


def test_earliest_of_several_stops_wins() -> None:
    assert feed(StopBuffer(["world", "lo"]), ["hello world"]) == ("hel", True)


def test_no_stops_passes_text_through() -> None:
    assert StopBuffer([]).push("anything") == ("anything", False)


@given(
    text=st.text(alphabet="abcXY", max_size=40),
    stop=st.text(alphabet="abcXY", min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
)
def test_any_split_gives_the_same_result_as_one_piece(
    text: str, stop: str, cuts: list[int]
) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    expected_hit = stop in text
    expected = text[: text.find(stop)] if expected_hit else text
    assert feed(StopBuffer([stop]), pieces) == (expected, expected_hit)


def test_utf8_stream_never_splits_a_character() -> None:
    stream = Utf8Stream()
    data = "é🙂".encode()
    out = [stream.push(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) + stream.flush() == "é🙂"
    assert out[0] == ""  # half of 'é' is held back, not replaced
