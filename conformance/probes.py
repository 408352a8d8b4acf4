"""Tiny traffic probes run inside Mininet hosts (``python -m conformance.probes``).

Plain kernel sockets only, so what leaves a host is what any application
would send. Each probe prints one JSON line saying what it did.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct


def udp(dst: str, dport: int, sport: int, count: int, wait: float) -> dict:
    """Send ``count`` datagrams and count replies."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if sport:
            s.bind(("", sport))
        s.settimeout(wait)
        for i in range(count):
            s.sendto(f"natlab probe {i}".encode(), (dst, dport))
        replies = 0
        try:
            while True:
                s.recvfrom(2048)
                replies += 1
        except (TimeoutError, ConnectionRefusedError):
            pass
        return {"sent": count, "replies": replies, "sport": s.getsockname()[1]}


def tcp_syn(dst: str, dport: int, wait: float) -> dict:
    """Try one TCP connection."""
    with socket.socket() as s:
        s.settimeout(wait)
        try:
            s.connect((dst, dport))
            return {"connected": True}
        except OSError as exc:
            return {"connected": False, "error": type(exc).__name__}


def raw(dst: str, proto: int, count: int) -> dict:
    """Packets of IP protocol ``proto`` (50 ESP, 51 AH) with a made-up SPI (RFC 4303 2.1)."""
    spi, body = 0x4E415401, b"\x00" * 32
    if proto == 51:  # AH: next header, payload len, reserved, SPI, seq, 12-byte ICV (RFC 4302 2)
        payload = struct.pack("!BBHII", 59, 4, 0, spi, 1) + b"\x00" * 12
    else:
        payload = struct.pack("!II", spi, 1) + body
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, proto) as s:
        for _ in range(count):
            s.sendto(payload, (dst, 0))
    return {"sent": count, "proto": proto, "spi": spi}


def udp_refused(dst: str, dport: int, wait: float) -> dict:
    """Send to a closed port on a connected socket: ECONNREFUSED means the ICMP
    port-unreachable came back and the kernel matched its quoted header to us."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        s.connect((dst, dport))
        s.send(b"is anyone there")
        try:
            s.recv(100)
            return {"refused": False, "reply": True}
        except ConnectionRefusedError:
            return {"refused": True}
        except TimeoutError:
            return {"refused": False, "reply": False}


def tcp_sink(port: int, seconds: float) -> dict:
    """Accept and close TCP connections for ``seconds`` (the far end of connect-rate)."""
    import time

    accepted = 0
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", port))
        s.listen(1024)
        s.settimeout(0.2)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                conn, _ = s.accept()
            except TimeoutError:
                continue
            conn.close()
            accepted += 1
    return {"accepted": accepted}


def connect_rate(dst: str, dport: int, seconds: float) -> dict:
    """New TCP connections per second, one at a time, each from a fresh source port."""
    import time

    done = failed = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        with socket.socket() as s:
            s.settimeout(2)
            try:
                s.connect((dst, dport))
                done += 1
            except OSError:
                failed += 1
    elapsed = time.monotonic() - start
    return {"connections": done, "failed": failed, "seconds": round(elapsed, 3), "per_second": done / elapsed}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m conformance.probes", description=__doc__)
    sub = p.add_subparsers(dest="probe", required=True)

    def probe(name, func, *args, **options):
        a = sub.add_parser(name, help=func.__doc__.splitlines()[0] if func.__doc__ else None)
        for arg in args:
            a.add_argument(arg, type=int if arg in ("dport", "port", "proto") else str)
        for option, default in options.items():
            a.add_argument(f"--{option}", type=type(default), default=default)
        a.set_defaults(func=func)

    probe("udp", udp, "dst", "dport", sport=0, count=3, wait=0.5)
    probe("tcp-syn", tcp_syn, "dst", "dport", wait=1.0)
    probe("raw", raw, "dst", "proto", count=3)
    probe("udp-refused", udp_refused, "dst", "dport", wait=2.0)
    probe("tcp-sink", tcp_sink, "port", seconds=10.0)
    probe("connect-rate", connect_rate, "dst", "dport", seconds=3.0)
    args = vars(p.parse_args())
    func = args.pop("func")
    args.pop("probe")
    print(json.dumps(func(**args)))


if __name__ == "__main__":
    main()
