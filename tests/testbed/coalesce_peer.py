"""Run inside a throwaway network namespace by test_coalesce_live.py: a TUN with IFF_VNET_HDR, a TCP
listener behind it, and a peer (this script) that writes three segments coalesced into one frame.

Prints one JSON line: the bytes the listening application received and the kernel's TCP counters' changes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from scapy.layers.inet import IP, TCP

from client_agent.coalesce import frames
from client_agent.tun import Tun

ME, PEER, PORT = "10.77.0.2", "10.77.0.1", 5000


def tcp_counters() -> dict[str, int]:
    text = Path("/proc/net/snmp").read_text()
    lines = [line.split() for line in text.splitlines() if line.startswith("Tcp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))


def syn_ack(tun: Tun, sport: int) -> int:
    """The SYN-ACK's sequence number for ``sport``: what the next segments acknowledge."""
    end = time.monotonic() + 3
    while time.monotonic() < end:
        raw = tun.read()
        if raw is None:
            time.sleep(0.01)
            continue
        packet = IP(raw)
        if TCP in packet and packet[TCP].dport == sport and packet[TCP].flags == "SA":
            return packet[TCP].seq + 1
    raise TimeoutError("no SYN-ACK")


def main(corrupt: bool) -> None:
    tun = Tun("coal0", 1500, vnet_hdr=True)
    subprocess.run(["ip", "addr", "add", f"{PEER}/24", "dev", "coal0"], check=True)
    server = socket.create_server((PEER, PORT))
    server.settimeout(3)
    sport = 40000
    tun.write(bytes(IP(src=ME, dst=PEER) / TCP(sport=sport, dport=PORT, flags="S", seq=1000)))
    ack = syn_ack(tun, sport)
    tun.write(bytes(IP(src=ME, dst=PEER) / TCP(sport=sport, dport=PORT, flags="A", seq=1001, ack=ack)))
    conn, _ = server.accept()
    conn.settimeout(1)
    segments = [bytes(IP(src=ME, dst=PEER, flags="DF") / TCP(sport=sport, dport=PORT, flags="A",
                                                           seq=1001 + i * 1000, ack=ack) / (bytes([65 + i]) * 1000))
                for i in range(3)]
    if corrupt:
        segments[1] = segments[1][:-1] + bytes([segments[1][-1] ^ 1])
    written = list(frames(segments))
    before = tcp_counters()
    for frame, _ in written:
        os.write(tun.fd, frame)
    try:
        data = conn.recv(10000)
    except TimeoutError:
        data = b""
    after = tcp_counters()
    print(json.dumps({"frames": [n for _, n in written], "received": len(data),
                      "checksum_errors": after["InCsumErrors"] - before["InCsumErrors"],
                      "segments_in": after["InSegs"] - before["InSegs"]}))
    conn.close()
    tun.close()


if __name__ == "__main__":
    main(corrupt=sys.argv[1:] == ["corrupt"])
