"""``natlab fuzz`` in small: hypothesis picks the seeds; and the fuzzer must be able to fail."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance import fuzz
from conformance.fuzz import InvariantBroken, IpsecFuzzer, LeaseFuzzer
from nat_app.lease_server import LeaseServer, Outcome


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_hostile_lease_frames_never_crash_the_nat_nor_break_an_invariant(seed):
    fuzzer = LeaseFuzzer(seed)
    for _ in range(300):
        fuzzer.step()
    assert fuzzer.frames > 200


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_no_malformed_esp_or_ah_packet_is_accepted(seed):
    fuzzer = IpsecFuzzer(seed)
    for _ in range(300):
        fuzzer.step()
    assert fuzzer.malformed > 200


def test_the_fuzzer_catches_a_nat_that_lets_a_forger_release_a_lease(monkeypatch):
    def careless(self, entry, request, origin, now, render):  # no owner or nonce check
        self.table.remove(entry.id)
        self.forget(entry.id, now)
        return Outcome(None, removed=[entry]), render(request.info, entry), 0

    monkeypatch.setattr(LeaseServer, "_renew_or_release", careless)
    fuzzer = LeaseFuzzer(1)
    with pytest.raises(InvariantBroken, match="changed entry"):
        for _ in range(20_000):
            fuzzer.step()


def test_the_fuzzer_catches_an_agent_that_accepts_a_forged_packet(monkeypatch):
    monkeypatch.setattr(fuzz.processing, "decapsulate", lambda packet, sad: None)
    fuzzer = IpsecFuzzer(1)
    with pytest.raises(InvariantBroken, match="accepted"):
        for _ in range(100):
            fuzzer.step()


def test_the_command_prints_counts_and_exits_zero_on_a_clean_run():
    lines: list[str] = []
    args = argparse.Namespace(frames=200, packets=100, seed=7, seconds=60.0)
    assert fuzz.run(args, out=lines.append) == 0
    text = "\n".join(lines)
    assert "lease frames by kind and answer" in text and "ESP/AH packets by kind and outcome" in text
    assert "no broken invariant" in text


def test_the_command_exits_non_zero_on_a_broken_invariant(monkeypatch):
    monkeypatch.setattr(fuzz.processing, "decapsulate", lambda packet, sad: None)
    lines: list[str] = []
    args = argparse.Namespace(frames=10, packets=100, seed=7, seconds=60.0)
    assert fuzz.run(args, out=lines.append) == 1
    assert any(line.startswith("FAILED (seed 7)") for line in lines)
