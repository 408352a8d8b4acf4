"""Evidence from the live testbed: packet captures in the hosts, read back by
tshark (an oracle nobody here wrote), flow dumps and the translation table."""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CAPTURE_SETTLE_S = 0.7


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


@contextmanager
def captures(hosts_intfs: list[tuple], folder: Path):
    """tcpdump on each (host, interface) while the block runs; yields {name: pcap path}."""
    folder.mkdir(parents=True, exist_ok=True)
    procs, paths = [], {}
    for host, intf in hosts_intfs:
        path = folder / f"{intf}.pcap"
        paths[intf] = path
        procs.append(host.popen(["tcpdump", "-i", intf, "-n", "-U", "-Z", "root", "-w", str(path), "ip"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(CAPTURE_SETTLE_S)
    try:
        yield paths
    finally:
        time.sleep(CAPTURE_SETTLE_S)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_FIELDS = ("ip.src", "ip.dst", "ip.proto", "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport",
           "tcp.flags.syn", "tcp.flags.ack", "tcp.checksum.status", "udp.checksum.status", "icmp.type", "icmp.ident", "tcp.checksum")


def read_pcap(path: Path) -> list[Packet]:
    """Every IPv4 packet of ``path``, with tshark verifying TCP/UDP checksums.

    ICMP errors quote an inner header; tshark then reports two values per
    field, and the outer one (first) is kept.
    """
    cmd = ["tshark", "-n", "-r", str(path), "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
           "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f", *sum((["-e", f] for f in _FIELDS), [])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    packets = []
    for line in out.splitlines():
        v = dict(zip(_FIELDS, line.split("\t"), strict=False))
        if not v.get("ip.src"):
            continue
        sport = v.get("tcp.srcport") or v.get("udp.srcport")
        dport = v.get("tcp.dstport") or v.get("udp.dstport")
        syn, ack = v.get("tcp.flags.syn") in ("1", "True"), v.get("tcp.flags.ack") in ("1", "True")
        bad = v.get("udp.checksum.status") == "0" or tcp_checksum_bad(v.get("tcp.checksum.status"),
                                                                       v.get("tcp.checksum", ""))
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
