"""Captures that miss nothing: the marker every capture must hold, and what happens without it."""

from __future__ import annotations

import re

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from conformance import evidence, marker
from conformance.oracles import check_cleartext_capture, verify_capture
from conformance.results import ScenarioResult
from conformance.runner import _run_all
from conformance.scenario import ScenarioRecord


def test_marker_datagram_is_valid_ipv4_udp_to_the_discard_port():
    pkt = IP(marker.datagram("abc"))
    assert pkt.src == marker.SRC and pkt.dst == marker.DST and pkt.ttl == 1
    assert pkt[UDP].dport == marker.PORT
    assert bytes(pkt[UDP].payload) == marker.token_bytes("abc")
    rebuilt = IP(bytes(pkt))
    del rebuilt.chksum, rebuilt[UDP].chksum
    assert IP(bytes(rebuilt)).chksum == pkt.chksum and IP(bytes(rebuilt))[UDP].chksum == pkt[UDP].chksum


def test_ethernet_marker_is_addressed_to_the_sender_itself():
    mac = bytes.fromhex("020000000001")
    frame = Ether(marker.ethernet_frame(mac, "t"))
    assert frame.src == frame.dst == "02:00:00:00:00:01"
    assert marker.is_marker(bytes(frame[IP]))


@pytest.mark.parametrize("other", [
    IP(src="10.0.0.1", dst="255.255.255.255") / UDP(dport=9) / b"natlab probe",
    IP(src="10.0.0.1", dst="203.0.113.100") / UDP(dport=9) / marker.PREFIX,
    IP(dst="255.255.255.255") / UDP(dport=53) / marker.PREFIX,
])
def test_traffic_that_only_resembles_a_marker_is_not_one(other):
    assert not marker.is_marker(bytes(other))


def test_readers_of_captures_skip_markers(tmp_path):
    pcap = tmp_path / "raw.pcap"
    wrpcap(str(pcap), [IP(marker.datagram("x")), IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)],
           linktype=101)
    assert [p.src for p in check_cleartext_capture(pcap)] == ["10.0.0.1"]
    assert verify_capture(pcap, []).skipped == {"not ESP or AH": 1}


class _Proc:
    def terminate(self): pass
    def wait(self, timeout=None): return 0
    def kill(self): pass


class _Host:
    """Stands in for a Mininet host: tcpdump is a no-op; ``cmd`` (the marker probe) may write to the capture."""

    def __init__(self, folder, deliver):
        self.folder, self.deliver = folder, deliver

    def popen(self, argv, **_):
        return _Proc()

    def cmd(self, line):
        intfs, token = re.search(r"marker (\S+) (\S+)", line).groups()
        for intf in intfs.split(","):
            if self.deliver(token):
                with (self.folder / f"{intf}.pcap").open("ab") as f:
                    f.write(marker.token_bytes(f"{token}:{intf}"))
        return '{"sent": {}}'


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(evidence, "MARKER_WAIT_S", 0.3)


def test_capture_holding_both_markers_is_trusted(tmp_path, quick):
    with evidence.captures([(_Host(tmp_path, lambda t: True), "h1-eth0")], tmp_path) as pcaps:
        assert b"-begin:h1-eth0" in pcaps["h1-eth0"].read_bytes()
    assert b"-end:h1-eth0" in pcaps["h1-eth0"].read_bytes()


def test_capture_without_its_end_marker_raises(tmp_path, quick):
    host = _Host(tmp_path, lambda token: token.endswith("begin"))
    with pytest.raises(evidence.CaptureIncomplete, match="h1-eth0"), evidence.captures([(host, "h1-eth0")], tmp_path):
        pass


def test_capture_without_its_begin_marker_raises_before_the_block(tmp_path, quick):
    ran = []
    with pytest.raises(evidence.CaptureIncomplete), evidence.captures([(_Host(tmp_path, lambda t: False), "x")],
                                                                      tmp_path):
        ran.append(1)
    assert not ran


def test_an_incomplete_capture_makes_error_verdicts_never_pass_or_fail(tmp_path):
    def scenario(ctx):
        raise evidence.CaptureIncomplete("capture without its end marker: ['h1-eth0']")
    record = ScenarioRecord("incomplete", scenario, ("NAT-DROP",), order=1)

    class Writer:
        got: list[ScenarioResult] = []

        def write(self, r):
            self.got.append(r)

    class Ctx:
        run_dir = tmp_path

    writer = Writer()
    _run_all(Ctx(), [record], writer, 0, 1, lambda _: None)
    assert [(r.behaviour, r.verdict) for r in writer.got] == [("NAT-DROP", "error")]
    assert "end marker" in writer.got[0].reason



def test_read_pcap_drops_markers_and_judges_icmp_checksums(tmp_path):
    from scapy.layers.inet import ICMP

    pcap = tmp_path / "eth.pcap"
    mac = bytes.fromhex("020000000001")
    good = Ether() / IP(src="203.0.113.1", dst="203.0.113.100") / ICMP(id=7)
    bad = Ether() / IP(src="203.0.113.1", dst="203.0.113.100") / ICMP(id=8, chksum=0x1234)
    wrpcap(str(pcap), [Ether(marker.ethernet_frame(mac, "t:eth")), good, bad])
    packets = evidence.read_pcap(pcap)
    assert [(p.icmp_id, p.checksum_bad) for p in packets] == [(7, False), (8, True)]
