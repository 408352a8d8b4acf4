"""NAT-AUTO's judges fail against a NAT without NAPT, with bad ICMP checksums, and on empty evidence.

``conformance.scenarios.napt.nat_auto`` runs here with the applications and
the captures stood in for: what curl, iperf3, ping and the probe report, and
the packets tshark would read on each wire. The real NAT is judged live.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

from conformance.context import Record
from conformance.evidence import Packet
from conformance.scenarios import napt

G = "203.0.113.1"
SRV1, SRV2 = napt.SRV1, napt.SRV2


class _Host:
    def __init__(self, name: str, ip: str = "") -> None:
        self.name, self.ip = name, ip

    def IP(self) -> str:  # noqa: N802 - Mininet's name
        return self.ip


CLIENTS = [_Host(f"h{i}", f"10.0.0.{i}") for i in (1, 2, 3)]


def _p(src, dst, proto, sport=None, dport=None, *, bad=False, icmp_type=None, icmp_id=None) -> Packet:
    return Packet(src, dst, proto, sport, dport, False, bad, icmp_type, icmp_id)


def good_wires() -> dict[str, list[Packet]]:
    """Every wire as tshark would read it when the NAT translates TCP, UDP and ICMP."""
    wires = {"srv1-eth0": [], "srv2-eth0": []}
    for i, h in enumerate(CLIENTS):
        wires[f"{h.name}-eth0"] = [_p(h.ip, SRV1, 6, 40000, 8000), _p(h.ip, SRV2, 17, 40001, 5202),
                                   _p(h.ip, SRV1, 1, icmp_type=8, icmp_id=i), _p(SRV1, h.ip, 1, icmp_type=0, icmp_id=i)]
        wires["srv1-eth0"] += [_p(G, SRV1, 6, 40000 + i, 8000), _p(G, SRV1, 1, icmp_type=8, icmp_id=100 + i)]
        wires["srv2-eth0"] += [_p(G, SRV2, 17, 40001 + i, 5202)]
    return wires


class _Testbed:
    def host(self, name):
        return _Host(name)

    def table(self):
        return {"globals": [G], "entries": [{"kind": "NAT-ALG", "protocol": p} for p in (1, 6, 17)], "counters": {}}


class _Ctx:
    def __init__(self, folder: Path) -> None:
        self.testbed, self.folder = _Testbed(), folder

    def clients(self):
        return CLIENTS

    @contextmanager
    def recorded(self, scenario):
        rec = Record(self, scenario, self.folder)
        yield rec
        rec.table_after = self.testbed.table()

    def rel(self, path):
        return str(path)


def run_nat_auto(tmp_path, monkeypatch, wires, *, pings=(3, 3), codes=200) -> dict[str, str]:
    apps = napt.apps
    monkeypatch.setattr(apps, "http_server", lambda *a, **k: nullcontext())
    monkeypatch.setattr(apps, "iperf3_server", lambda *a, **k: nullcontext())
    monkeypatch.setattr(apps, "curl", lambda *a, **k: codes)
    monkeypatch.setattr(apps, "iperf3", lambda *a, **k: {"received": 100, "bps": 1e6})
    monkeypatch.setattr(apps, "probe", lambda *a, **k: {"refused": True})
    monkeypatch.setattr(apps, "ping", lambda *a, **k: pings)

    @contextmanager
    def captures(intfs, folder):
        yield {name: Path(name) for _, name in intfs}

    monkeypatch.setattr(napt, "captures", captures)
    monkeypatch.setattr(napt, "read_pcap", lambda path: wires.get(str(path), []))
    return {r.scenario.split("/")[1]: r.verdict for r in napt.nat_auto(_Ctx(tmp_path))}


def test_nat_auto_passes_with_napt(tmp_path, monkeypatch):
    assert set(run_nat_auto(tmp_path, monkeypatch, good_wires()).values()) == {"pass"}


@pytest.mark.parametrize("proto, name", [(6, "tcp"), (17, "udp"), (1, "icmp")])
def test_nat_auto_fails_without_translation(proto, name, tmp_path, monkeypatch):
    """Variant: a NAT that forwards without rewriting: private sources on the servers' wires."""
    wires = good_wires()
    for server in ("srv1-eth0", "srv2-eth0"):
        wires[server] = [dataclasses.replace(p, src="10.0.0.1") if p.proto == proto else p for p in wires[server]]
    assert run_nat_auto(tmp_path, monkeypatch, wires)[name] == "fail"


def test_nat_auto_icmp_fails_on_a_bad_icmp_checksum(tmp_path, monkeypatch):
    """The fixed spot: checksum_bad used to cover TCP/UDP only, so the ICMP check could not fail."""
    wires = good_wires()
    wires["srv1-eth0"] = [dataclasses.replace(p, checksum_bad=True) if p.proto == 1 else p for p in wires["srv1-eth0"]]
    assert run_nat_auto(tmp_path, monkeypatch, wires)["icmp"] == "fail"


def test_nat_auto_icmp_fails_when_ping_sent_nothing(tmp_path, monkeypatch):
    """ping's own (0 sent, 0 received) used to count as "every ping answered"."""
    assert run_nat_auto(tmp_path, monkeypatch, good_wires(), pings=(0, 0))["icmp"] == "fail"


def test_nat_auto_fails_on_empty_captures(tmp_path, monkeypatch):
    got = run_nat_auto(tmp_path, monkeypatch, {})
    assert {k: v for k, v in got.items() if k != "icmp-error"} == {"tcp": "fail", "udp": "fail", "icmp": "fail"}
