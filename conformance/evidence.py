"""Evidence from the live testbed: packet captures in the hosts, read back by
tshark (an oracle nobody here wrote), flow dumps and the translation table."""

from __future__ import annotations

import functools
import json
import secrets
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conformance import marker

MARKER_WAIT_S = 5.0  # how long a marker may take to reach its capture file before the capture is not trusted
MARKER_POLL_S = 0.05


class CaptureIncomplete(RuntimeError):
    """A capture lacks its begin or end marker: it may have missed packets, so no verdict may rest on it.

    Scenarios let it propagate; the runner turns it into "error" verdicts.
    """


@dataclass(frozen=True)
class Packet:
    """One IPv4 packet of a capture, as tshark dissected it."""

    src: str
    dst: str
    proto: int
    sport: int | None
    dport: int | None
    tcp_syn_only: bool
    checksum_bad: bool
    icmp_type: int | None
    icmp_id: int | None


CAPTURE_BUFFER_KIB = 32768  # with a snap length (benchmarks): a deep kernel buffer, or tcpdump drops at line rate


@contextmanager
def captures(hosts_intfs: list[tuple], folder: Path, snaplen: int = 0):
    """tcpdump on each (host, interface) while the block runs; yields {name: pcap path}.

    ``snaplen`` > 0 keeps only that many bytes of each frame (the record keeps its original length):
    what a benchmark that counts bytes needs at high rates.

    Immediate mode, so nothing waits in a buffer when tcpdump stops. Each
    capture must hold its begin marker before the block starts and its end
    marker after it ends (:mod:`conformance.marker`), or CaptureIncomplete.
    """
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(6)
    procs, paths = [], {}
    for host, intf in hosts_intfs:
        path = folder / f"{intf}.pcap"
        path.unlink(missing_ok=True)
        paths[intf] = path
        snap = ["-s", str(snaplen), "-B", str(CAPTURE_BUFFER_KIB)] if snaplen else []
        procs.append(host.popen(["tcpdump", "-i", intf, "-n", "-U", "--immediate-mode", "-Z", "root", *snap, "-w",
                                 str(path), "ip"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    finished = False
    try:
        _mark_until_seen(hosts_intfs, paths, f"{token}-begin")
        yield paths
        finished = True
    finally:
        missing = _mark_until_seen(hosts_intfs, paths, f"{token}-end", strict=False) if finished else []
        _stop(procs)
    if missing:
        raise CaptureIncomplete(f"capture without its end marker (it may have missed packets): {missing}")


def _mark_until_seen(hosts_intfs: list[tuple], paths: dict[str, Path], token: str, strict: bool = True) -> list[str]:
    """Send ``token``'s marker out of every captured interface until each capture file holds it.

    Markers are resent every half second: a capture that has not opened its
    interface yet misses the first. Returns the captures still without it
    (raises CaptureIncomplete for them if ``strict``).
    """
    deadline = time.monotonic() + MARKER_WAIT_S
    missing = list(paths)
    next_send = 0.0
    while missing and time.monotonic() < deadline:
        if time.monotonic() >= next_send:
            _send_markers([(h, i) for h, i in hosts_intfs if i in missing], token)
            next_send = time.monotonic() + 0.5
        time.sleep(MARKER_POLL_S)
        missing = [name for name in missing if not has_marker(paths[name], f"{token}:{name}")]
    if missing and strict:
        raise CaptureIncomplete(f"capture never showed its begin marker: {missing}")
    return missing


def _send_markers(hosts_intfs: list[tuple], token: str) -> None:
    by_host: dict = {}
    for host, intf in hosts_intfs:
        by_host.setdefault(host, []).append(intf)
    for host, intfs in by_host.items():
        host.cmd(f"{sys.executable} -m conformance.probes marker {','.join(intfs)} {token}")


def has_marker(path: Path, token: str) -> bool:
    """Does the capture file hold the marker with ``token``? (tcpdump -U writes each packet whole.)"""
    try:
        return marker.token_bytes(token) in path.read_bytes()
    except OSError:
        return False


def _stop(procs: list) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_FIELDS = ("ip.src", "ip.dst", "ip.proto", "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport",
           "tcp.flags.syn", "tcp.flags.ack", "tcp.checksum.status", "udp.checksum.status", "icmp.type", "icmp.ident", "tcp.checksum", "icmp.checksum.status")


# tshark's TCP sequence analysis and stream reassembly feed none of the per-packet fields the
# judges read, and cost minutes on an iperf3 capture (measured: 4 min 54 s vs 4.2 s for 86,609
# frames of srv1's NAT-AUTO capture, field output identical).
TSHARK_PER_PACKET = ("-o", "tcp.analyze_sequence_numbers:FALSE", "-o", "tcp.desegment_tcp_streams:FALSE")


@functools.cache
def tshark_payloads_as_data() -> tuple[str, ...]:
    """tshark options that leave what TCP and UDP carry undissected: TCP payloads read as data, and every
    protocol that guesses at TCP or UDP payloads (a heuristic dissector, as ``tshark -G heuristic-decodes``
    lists them) disabled. An ESP oracle needs nothing above TCP/UDP, and a payload dissector that throws
    inside a decrypted packet (Thrift's heuristic on an iperf3 segment: "BoundError") aborts the ESP
    dissector before it adds that frame's ICV verdict: an authentic packet read as unverified (fresh-clone
    CI run 7, 1 frame of 9,443). UDP keeps its port table: NAT-T's UDP/4500 must still reach ESP."""
    listing = subprocess.run(["tshark", "-G", "heuristic-decodes"], capture_output=True, text=True, check=True).stdout
    guessers = sorted({row.split("\t")[1] for row in listing.splitlines() if row.split("\t")[0] in ("tcp", "udp")})
    return ("-d", "tcp.port==1-65535,data", *(option for name in guessers for option in ("--disable-protocol", name)))


def read_pcap(path: Path) -> list[Packet]:
    """Every IPv4 packet of ``path`` but the capture markers, with tshark verifying TCP/UDP/ICMP checksums.

    ICMP errors quote an inner header; tshark then reports two values per
    field, and the outer one (first) is kept.
    """
    cmd = ["tshark", "-n", "-r", str(path), *TSHARK_PER_PACKET, "-o", "tcp.check_checksum:TRUE",
           "-o", "udp.check_checksum:TRUE",
           "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f", *sum((["-e", f] for f in _FIELDS), [])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    packets = []
    for line in out.splitlines():
        v = dict(zip(_FIELDS, line.split("\t"), strict=False))
        if not v.get("ip.src") or marker.is_marker_fields(v["ip.dst"], v.get("ip.proto", ""), v.get("udp.dstport")):
            continue
        sport = v.get("tcp.srcport") or v.get("udp.srcport")
        dport = v.get("tcp.dstport") or v.get("udp.dstport")
        syn, ack = v.get("tcp.flags.syn") in ("1", "True"), v.get("tcp.flags.ack") in ("1", "True")
        bad = (v.get("udp.checksum.status") == "0" or v.get("icmp.checksum.status") == "0"
               or tcp_checksum_bad(v.get("tcp.checksum.status"), v.get("tcp.checksum", "")))
        packets.append(Packet(v["ip.src"], v["ip.dst"], int(v["ip.proto"]), int(sport) if sport else None,
                              int(dport) if dport else None, syn and not ack, bad,
                              int(v["icmp.type"]) if v.get("icmp.type") else None,
                              int(v["icmp.ident"], 0) if v.get("icmp.ident") else None))
    return packets


def tcp_checksum_bad(status: str | None, value: str) -> bool:
    """tshark's verdict, except that it calls 0xffff bad where it computes 0x0000: both are
    one's-complement zero (RFC 1624 section 3) and receivers accept either."""
    return status == "0" and value.lower() != "0xffff"


def save_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def save_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
