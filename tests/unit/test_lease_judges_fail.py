"""The lease-protocol judges (NAT-DEF, NAT-HASALG, NAT-ALLOC, NAT-UNIQ, CL-UNIQ, NAT-ENTRY) fail against a NAT that lacks each behaviour.

``conformance.scenarios.leases.lease_protocol`` is run against a stand-in NAT
that answers the lease protocol the way the seed says (FIG. 7), then against
variants of it, each missing one behaviour; the judge of that behaviour must
say "fail". The stand-in plays only the answers and the table: the real NAT is
judged on the live testbed.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

from conformance.context import Record
from conformance.scenarios import leases

GLOBALS = ["203.0.113.1", "203.0.113.2"]
FIRST_SPI = 0x1000


class FakeNat:
    """Answers DEFINE and LEASE like natlab's NAT; ``lacks`` names the one behaviour it does not have."""

    def __init__(self, lacks: str = "") -> None:
        self.lacks, self.entries, self.next_spi = lacks, [], FIRST_SPI

    def ask(self, host, opcode: str, **f) -> dict:
        if opcode == "DEFINE":
            return self._define(f)
        return self._lease(host, f)

    def _define(self, f: dict) -> dict:
        if f["protocol"] == 6 and self.lacks != "no_has_alg":
            return {"result": "HAS_ALG", "lifetime": 1800}
        if f["protocol"] == 50 and f["range_min"] < 256 and self.lacks != "accepts_reserved_range":
            return {"result": "MALFORMED_REQUEST", "lifetime": 1800}
        return {"result": "SUCCESS", "lifetime": 600}

    def _lease(self, host, f: dict) -> dict:
        ip = f.get("global_ip") or GLOBALS[0]
        if ip not in GLOBALS and self.lacks not in ("outside_pool", "refused_entry"):
            return {"result": "CANNOT_PROVIDE_EXTERNAL", "lifetime": 1800}
        taken = {(e["global_ip"], e["global_gpn"]) for e in self.entries}
        if f.get("global_gpn") is not None and (ip, f["global_gpn"]) in taken and self.lacks != "spi_in_use_granted":
            return {"result": "GPN_IN_USE", "lifetime": 1800}
        spi = f.get("global_gpn") or (5 if self.lacks == "reserved_spi" else self._spi())
        entry = {"kind": "CLIENT-ALG", "protocol": f["protocol"], "private_ip": host.IP(), "private_gpn": spi,
                 "global_ip": ip, "global_gpn": spi, "expires_in": 3600,
                 "foreign": None if self.lacks == "foreign_missing" else f.get("foreign_ip")}
        self.entries.append(entry)
        if ip not in GLOBALS:  # refused_entry: the refusal is answered, but an entry was made anyway
            return {"result": "CANNOT_PROVIDE_EXTERNAL" if self.lacks == "refused_entry" else "SUCCESS",
                    "lifetime": 1800, "info": {"global_ip": ip, "global_gpn": spi, "private_gpn": spi}}
        lifetime = 3600 if f.get("lifetime") == 0xFFFFFFFF else f.get("lifetime", 600)
        return {"result": "SUCCESS", "lifetime": lifetime, "nonce": "00" * 12,
                "info": {"global_ip": ip, "global_gpn": spi, "private_gpn": spi}}

    def _spi(self) -> int:
        self.next_spi += 1
        return self.next_spi


class _Host:
    def __init__(self, n: int) -> None:
        self.name, self.ip = f"h{n}", f"10.0.0.{n}"

    def IP(self) -> str:  # noqa: N802 - Mininet's name
        return self.ip


class _Testbed:
    def __init__(self, nat: FakeNat) -> None:
        self.nat = nat

    def table(self) -> dict:
        return {"globals": GLOBALS, "entries": list(self.nat.entries), "counters": {}}


class _Ctx:
    def __init__(self, nat: FakeNat, folder: Path) -> None:
        self.testbed, self.folder = _Testbed(nat), folder

    def clients(self) -> list:
        return [_Host(n) for n in (1, 2, 3)]

    @contextmanager
    def recorded(self, scenario: str):
        yield Record(self, scenario, self.folder)


def verdicts(lacks: str, tmp_path: Path, monkeypatch) -> dict[str, str]:
    nat = FakeNat(lacks)
    monkeypatch.setattr(leases, "ask", nat.ask)
    return {r.behaviour: r.verdict for r in leases.lease_protocol(_Ctx(nat, tmp_path))}


def test_a_nat_with_every_behaviour_passes(tmp_path, monkeypatch):
    assert set(verdicts("", tmp_path, monkeypatch).values()) == {"pass"}


@pytest.mark.parametrize(("lacks", "behaviour"), [
    ("accepts_reserved_range", "NAT-DEF"),
    ("no_has_alg", "NAT-HASALG"),
    ("reserved_spi", "NAT-ALLOC"),
    ("outside_pool", "NAT-ALLOC"),
    ("spi_in_use_granted", "NAT-UNIQ"),
    ("spi_in_use_granted", "CL-UNIQ"),
    ("foreign_missing", "NAT-ENTRY"),
    ("refused_entry", "NAT-ENTRY"),
])
def test_each_lease_judge_fails_against_a_nat_that_lacks_its_behaviour(lacks, behaviour, tmp_path, monkeypatch):
    assert verdicts(lacks, tmp_path, monkeypatch)[behaviour] == "fail"


def test_lease_judges_fail_when_the_nat_answers_nothing(tmp_path, monkeypatch):
    nat = FakeNat()
    monkeypatch.setattr(leases, "ask", lambda host, opcode, **f: {"answered": False})
    got = {r.behaviour: r.verdict for r in leases.lease_protocol(_Ctx(nat, tmp_path))}
    assert set(got.values()) == {"fail"}


def test_gone_after_needs_the_packets_after_on_the_senders_wire():
    assert leases.gone_after(4, 2, before=2, after=2)
    assert not leases.gone_after(2, 2, before=2, after=2)  # nothing sent after: the NAT was never tested
    assert not leases.gone_after(4, 4, before=2, after=2)  # a NAT that kept the entry (no release, no expiry)
    assert not leases.gone_after(0, 0, before=1, after=2)  # empty captures
