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


# ----------------------------------------------------------------------------- leased traffic (pcaps built with scapy)

G1, G2 = GLOBALS
SRV1, SRV2 = leases.SRV1, leases.SRV2
ESP_SPI = {"h1": 0x2001, "h2": 0x2002, "h3": 0x2003}
AH_FAST, AH_SHORT = 0x4001, 0x4002


class TrafficNat:
    """The answers of leased_traffic's lease requests, owner and nonce checked, and a short lease that expires."""

    def __init__(self, any_nonce: bool = False) -> None:
        self.entries: list[dict] = []
        self.next = {50: 0x2000, 17: 0x3000, 51: 0x4000}
        self.any_nonce = any_nonce  # the variant of NAT-RENEW: the nonce is not checked

    def ask(self, host, opcode: str, **f) -> dict:
        mine = [e for e in self.entries if e["protocol"] == f["protocol"] and
                e["global_gpn"] in (f.get("private_gpn"), f.get("global_gpn"))]
        if mine:
            e = mine[0]
            if (f.get("nonce") != e["nonce"] and not self.any_nonce) or host.IP() != e["private_ip"]:
                return {"result": "NOT_AUTHORIZED", "lifetime": 1800}
            if f.get("lifetime") == 0:
                self.entries.remove(e)
                return {"result": "SUCCESS", "lifetime": 0}
            e["expires_in"] = f["lifetime"]
            return {"result": "SUCCESS", "lifetime": f["lifetime"]}
        self.next[f["protocol"]] += 1
        spi = self.next[f["protocol"]]
        nonce = f"{spi:024x}"
        self.entries.append({"protocol": f["protocol"], "global_gpn": spi, "private_ip": host.IP(), "nonce": nonce,
                             "expires_in": f.get("lifetime", 600), "global_ip": f.get("global_ip")})
        return {"result": "SUCCESS", "lifetime": f.get("lifetime", 600), "nonce": nonce,
                "info": {"global_gpn": spi, "global_ip": f.get("global_ip")}}

    def sleep(self, seconds: float) -> None:
        if seconds >= 2:  # the short lease's 2 s pass
            self.entries = [e for e in self.entries if e["expires_in"] != 2]


def _esp(src, dst, spi, n=1):
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    return [Ether() / IP(src=src, dst=dst, proto=50) / Raw(spi.to_bytes(4, "big") + bytes(28))] * n


def _ah(src, dst, spi, n=1):
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    return [Ether() / IP(src=src, dst=dst, proto=51) / Raw(bytes([59, 4, 0, 0]) + spi.to_bytes(4, "big") + bytes(28))] * n


def good_traffic() -> dict[str, list]:
    """Each wire as it is when the NAT rewrites, demultiplexes, releases and expires as it should."""
    wires = {f"h{i}-eth0": [] for i in (1, 2, 3)} | {"srv1-eth0": [], "srv2-eth0": []}
    for i, (name, spi) in enumerate(ESP_SPI.items(), start=1):
        wires[f"{name}-eth0"] += _esp(f"10.0.0.{i}", SRV1, 0x10000 + i, 2) + _esp(SRV1, f"10.0.0.{i}", spi, 2)
        wires["srv1-eth0"] += _esp(G1, SRV1, 0x10000 + i, 2) + _esp(SRV1, G1, spi, 2)
    wires["h1-eth0"] += _esp("10.0.0.1", SRV2, 0x4E415401, 2)  # to a foreign without an entry
    wires["srv2-eth0"] += _esp(SRV2, G1, leases.UNLEASED_SPI, 2)
    wires["srv1-eth0"] += _esp(SRV1, G1, ESP_SPI["h1"], 2)  # straight to h1's released SPI
    wires["srv1-eth0"] += _ah(SRV1, G1, AH_SHORT, 3)  # one answer before expiry, two after
    wires["h2-eth0"] += _ah(SRV1, "10.0.0.2", AH_SHORT, 1)
    return wires


class _TrafficTestbed:
    def __init__(self, nat: TrafficNat) -> None:
        self.nat = nat

    def host(self, name):
        class _Srv:
            def popen(self, argv, **_):
                class _P:
                    def terminate(self): pass
                    def wait(self): return 0
                return _P()
        return _Srv()

    def table(self) -> dict:
        return {"globals": GLOBALS, "entries": list(self.nat.entries), "counters": {"slow_path_packets": 7}}

    def dump_flows(self) -> str:
        return f"priority=30000,ip,nw_dst={G2},nw_proto=51 actions=output:1"


class _TrafficCtx(_Ctx):
    def __init__(self, nat, folder):
        self.testbed, self.folder = _TrafficTestbed(nat), folder

    def rel(self, path):
        return Path(path).name


def traffic_verdicts(wires: dict, tmp_path: Path, monkeypatch, nat: TrafficNat | None = None) -> dict[str, str]:
    from contextlib import contextmanager

    from scapy.utils import wrpcap

    nat = nat or TrafficNat()
    paths = {}
    for name, frames in wires.items():
        paths[name] = tmp_path / f"{name}.pcap"
        wrpcap(str(paths[name]), frames or [])

    @contextmanager
    def captures(intfs, folder):
        yield paths

    monkeypatch.setattr(leases, "ask", nat.ask)
    monkeypatch.setattr(leases, "captures", captures)
    monkeypatch.setattr(leases.apps, "probe", lambda *a, **k: {"replies": 1})
    monkeypatch.setattr(leases, "time", type("T", (), {"sleep": staticmethod(nat.sleep)}))
    out = {}
    for r in leases.leased_traffic(_TrafficCtx(nat, tmp_path)):
        out[r.scenario.split("/")[1]] = (r.verdict, r.reason)
    return out


def test_leased_traffic_passes_when_the_nat_does_everything(tmp_path, monkeypatch):
    got = traffic_verdicts(good_traffic(), tmp_path, monkeypatch)
    assert {k: v for k, v in got.items() if v[0] != "pass"} == {}


def _with(frame, **change):
    from scapy.layers.inet import IP

    copy = frame.copy()
    for k, v in change.items():
        setattr(copy[IP], k, v)
    del copy[IP].chksum
    return copy


@pytest.mark.parametrize(("variant", "scenario"), [
    ("no_source_rewrite", "esp-source-rewrite"),
    ("wrong_client", "esp-demux"),
    ("kept_after_release", "release"),
    ("no_expiry", "short-lease"),
    ("forwards_without_entry", "leased-protocols"),
    ("nothing_sent", "esp-source-rewrite"),
    ("nothing_sent", "leased-protocols"),
])
def test_each_leased_traffic_judge_fails_against_its_variant(variant, scenario, tmp_path, monkeypatch):
    from scapy.layers.inet import IP

    wires = good_traffic()
    if variant == "no_source_rewrite":  # NAT-OUT: ESP reaches srv1 from the private address
        wires["srv1-eth0"] = [_with(f, src="10.0.0.1") if f[IP].src == G1 else f for f in wires["srv1-eth0"]]
    elif variant == "wrong_client":  # NAT-IN: h1's SPI delivered to h2
        wires["h2-eth0"] += _esp(SRV1, "10.0.0.2", ESP_SPI["h1"], 1)
    elif variant == "kept_after_release":  # NAT-DEALLOC: srv1's ESP to the released SPI still reaches h1
        wires["h1-eth0"] += _esp(SRV1, "10.0.0.1", ESP_SPI["h1"], 2)
    elif variant == "no_expiry":  # NAT-EXPIRE: srv1's AH after expiry still reaches h2
        wires["h2-eth0"] += _ah(SRV1, "10.0.0.2", AH_SHORT, 2)
    elif variant == "forwards_without_entry":  # NAT-DROP: ESP to srv2 without an entry gets there
        wires["srv2-eth0"] += _esp(G1, SRV2, 0x4E415401, 1)
    elif variant == "nothing_sent":  # the senders' captures lack what they sent: "nothing arrived" proves nothing
        wires["h1-eth0"] = [f for f in wires["h1-eth0"] if f[IP].dst != SRV2]
        wires["srv2-eth0"] = []
    verdict, reason = traffic_verdicts(wires, tmp_path, monkeypatch)[scenario]
    assert verdict == "fail", reason


def test_nat_renew_fails_against_a_nat_that_renews_for_any_nonce(tmp_path, monkeypatch):
    got = traffic_verdicts(good_traffic(), tmp_path, monkeypatch, TrafficNat(any_nonce=True))
    assert got["owner-renews"][0] == "fail", got["owner-renews"]
