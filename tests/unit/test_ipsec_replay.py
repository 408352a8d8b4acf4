"""The anti-replay window (RFC 4303 section 3.4.3): edge cases and a model-based property test."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client_agent.ipsec.errors import Replayed
from client_agent.ipsec.replay import ReplayWindow


def test_fresh_window_accepts_one_and_refuses_zero() -> None:
    window = ReplayWindow()
    with pytest.raises(Replayed) as err:
        window.check(0)
    assert not err.value.duplicate and err.value.reason == "replay"
    window.check_and_accept(1)
    assert window.top == 1 and window.seen(1)


def test_duplicate_is_refused() -> None:
    window = ReplayWindow()
    window.check_and_accept(5)
    with pytest.raises(Replayed, match="already received") as err:
        window.check(5)
    assert err.value.duplicate and err.value.seq == 5


def test_out_of_order_inside_the_window_is_accepted_once() -> None:
    window = ReplayWindow(64)
    window.check_and_accept(100)
    window.check_and_accept(37)  # 100 - 63: the oldest number still inside
    with pytest.raises(Replayed, match="already received"):
        window.check(37)


def test_left_edge_of_the_window() -> None:
    """With top T and size W, T-W+1 is the last number inside; T-W is below the window."""
    window = ReplayWindow(64)
    window.check_and_accept(100)
    window.check(100 - 63)
    with pytest.raises(Replayed, match="below the replay window") as err:
        window.check(100 - 64)
    assert not err.value.duplicate


def test_sliding_forgets_what_falls_out_and_keeps_what_stays() -> None:
    window = ReplayWindow(64)
    for seq in (1, 2, 3):
        window.check_and_accept(seq)
    window.check_and_accept(66)  # window now 3..66
    with pytest.raises(Replayed, match="already received"):
        window.check(3)
    with pytest.raises(Replayed, match="below"):
        window.check(2)
    window.check_and_accept(4)


def test_a_jump_beyond_the_window_clears_it_without_huge_shifts() -> None:
    window = ReplayWindow(64)
    window.check_and_accept(1)
    window.check_and_accept(2**32 - 1)
    assert window.bitmap == 1
    with pytest.raises(Replayed, match="below"):
        window.check(2**32 - 65)
    window.check_and_accept(2**32 - 64)


def test_check_alone_does_not_move_the_window() -> None:
    """A packet is checked before its ICV is verified; only a verified one may mark the window."""
    window = ReplayWindow()
    window.check(1000)
    assert window.top == 0
    window.check_and_accept(1)


def test_wider_windows_and_minimum_size() -> None:
    window = ReplayWindow(1024)
    window.check_and_accept(2000)
    window.check_and_accept(2000 - 1023)
    with pytest.raises(Replayed):
        window.check(2000 - 1024)
    with pytest.raises(ValueError, match="below the minimum of 64"):
        ReplayWindow(32)


@given(
    size=st.sampled_from([64, 65, 128, 1000]),
    seqs=st.lists(st.integers(min_value=0, max_value=400), max_size=300),
)
def test_window_behaves_like_the_obvious_set_model(size: int, seqs: list[int]) -> None:
    """Against a model with a set of every accepted number: accept iff new, non-zero and within size of the top."""
    window, accepted, top = ReplayWindow(size), set(), 0
    for seq in seqs:
        expected_ok = seq != 0 and seq not in accepted and seq > top - size
        try:
            window.check(seq)
            ok = True
        except Replayed as err:
            ok = False
            assert err.duplicate == (seq in accepted and seq > top - size)
        assert ok == expected_ok, (seq, top)
        if ok:
            window.accept(seq)
            accepted.add(seq)
            top = max(top, seq)
        assert window.top == top


@given(st.lists(st.integers(min_value=1, max_value=2**32 - 1), min_size=1, max_size=50))
def test_every_accepted_number_is_refused_afterwards(seqs: list[int]) -> None:
    window = ReplayWindow()
    for seq in seqs:
        try:
            window.check(seq)
        except Replayed:
            continue
        window.accept(seq)
        with pytest.raises(Replayed):
            window.check(seq)
