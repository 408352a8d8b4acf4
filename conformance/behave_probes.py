"""Probes for the BEHAVE ledger, run inside Mininet hosts (``python -m conformance.behave_probes``).

Kernel sockets for what applications do (a large datagram the kernel fragments, a TCP simultaneous
open, a server that logs who reached it); scapy only where no application would do it (fragments
in a chosen order, an ICMP error with a chosen checksum). Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from collections.abc import Callable


def udp_from(dst: str, dport: int, sport: int, text: str, size: int, wait: float) -> dict:
    """One datagram of ``size`` bytes (``text`` first) from ``sport`` on a connected socket (so an ICMP
    error about it comes back as ECONNREFUSED); the reply's length (0: none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", sport))
        s.settimeout(wait)
        s.connect((dst, dport))
        s.send(text.encode().ljust(size, b"."))
        try:
            data = s.recv(65535)
        except (TimeoutError, ConnectionRefusedError) as exc:
            return {"sport": s.getsockname()[1], "reply_len": 0, "error": type(exc).__name__}
        return {"sport": s.getsockname()[1], "reply_len": len(data)}


def tcp_log_server(ip: str, port: int, seconds: float, log: str) -> dict:
    """Accept for ``seconds``; log each peer (address, port) and the text it sent, echo it back."""
    served = 0
    deadline = time.monotonic() + seconds
    with socket.socket() as s, open(log, "a") as out:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        s.listen(16)
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                conn, peer = s.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(4096)
                    conn.sendall(data)
                except OSError:
                    data = b""
            out.write(json.dumps({"src": peer[0], "sport": peer[1], "text": data.decode(errors="replace")}) + "\n")
            out.flush()
            served += 1
    return {"served": served}


def tcp_send(dst: str, dport: int, sport: int, text: str, wait: float, hold: float) -> dict:
    """Connect from ``sport``, send ``text``, read the echo, keep the connection open ``hold`` seconds."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sport:
            s.bind(("", sport))
        s.settimeout(wait)
        try:
            s.connect((dst, dport))
            s.sendall(text.encode())
            echo = s.recv(4096).decode(errors="replace")
            time.sleep(hold)  # an open, idle connection whose phase the NAT must call established
        except OSError as exc:
            return {"connected": False, "error": type(exc).__name__, "sport": s.getsockname()[1]}
        return {"connected": True, "echo": echo, "sport": s.getsockname()[1]}


def simopen(dst: str, dport: int, sport: int, wait: float) -> dict:
    """A TCP connect from a fixed port to a peer doing the same toward us (RFC 793 simultaneous open)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", sport))
        s.settimeout(wait)
        try:
            s.connect((dst, dport))
            s.sendall(b"simultaneous")
            got = s.recv(64)
        except OSError as exc:
            return {"connected": False, "error": type(exc).__name__}
        return {"connected": True, "got": got.decode(errors="replace")}


def frag_udp(dst: str, dport: int, sport: int, size: int, order: str, wait: float, ident: int) -> dict:
    """A UDP datagram of ``size`` bytes sent as scapy-made fragments in ``order`` (in | reversed | first-last |
    all-but-last), IP ID ``ident`` (0: random), from a bound socket that then waits for the echo (which comes
    back fragmented by the peer's kernel)."""
    import random

    from scapy.layers.inet import IP, UDP, fragment
    from scapy.sendrecv import send

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", sport))
        s.settimeout(wait)
        frags = fragment(IP(dst=dst, id=ident or random.randrange(1, 0xFFFF)) / UDP(sport=sport, dport=dport) /
                         (f"natlab fragments {order} ".encode().ljust(size, b"f")), fragsize=1000)
        sent = {"in": frags, "reversed": frags[::-1], "first-last": frags[1:] + frags[:1],
                "all-but-last": frags[:-1]}[order]
        send(sent, verbose=0)
        try:
            data, _ = s.recvfrom(65535)
        except (TimeoutError, ConnectionRefusedError) as exc:
            return {"fragments": len(sent), "reply_len": 0, "error": type(exc).__name__}
        return {"fragments": len(sent), "reply_len": len(data)}


def icmp_error(dst: str, quoted_src: str, quoted_dst: str, sport: int, dport: int, icmp_type: int, code: int,
               bad_checksum: int) -> dict:
    """An ICMP error about a UDP datagram (quoted_src:sport -> quoted_dst:dport), its checksum broken if asked."""
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.sendrecv import send

    quoted = bytes(IP(src=quoted_src, dst=quoted_dst) / UDP(sport=sport, dport=dport) / b"natlab")[:28]
    pkt = IP(dst=dst) / ICMP(type=icmp_type, code=code) / quoted
    if bad_checksum:
        pkt = IP(bytes(pkt))
        pkt[ICMP].chksum ^= 0x5555
    send(pkt, verbose=0)
    return {"sent": 1}


PROBES: dict[str, tuple[Callable[..., dict], tuple[str, ...], dict[str, object]]] = {
    "udp-from": (udp_from, ("dst", "dport"), {"sport": 0, "text": "natlab", "size": 64, "wait": 1.0}),
    "tcp-log-server": (tcp_log_server, ("ip", "port"), {"seconds": 60.0, "log": "/dev/null"}),
    "tcp-send": (tcp_send, ("dst", "dport"), {"sport": 0, "text": "natlab", "wait": 3.0, "hold": 0.0}),
    "simopen": (simopen, ("dst", "dport"), {"sport": 0, "wait": 12.0}),
    "frag-udp": (frag_udp, ("dst", "dport"), {"sport": 0, "size": 3000, "order": "in", "wait": 2.0, "ident": 0}),
    "icmp-error": (icmp_error, ("dst", "quoted_src", "quoted_dst"),
                   {"sport": 0, "dport": 0, "icmp_type": 3, "code": 3, "bad_checksum": 0}),
}


def _summary(func: Callable[..., dict]) -> str:
    """A probe's help: the first line of its docstring, which every probe has."""
    if func.__doc__ is None:
        raise ValueError(f"probe {func.__name__} has no docstring to show as its help")
    return func.__doc__.splitlines()[0]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m conformance.behave_probes", description=__doc__)
    sub = p.add_subparsers(dest="probe", required=True)
    for name, (func, args, options) in PROBES.items():
        a = sub.add_parser(name, help=_summary(func))
        for arg in args:
            a.add_argument(arg, type=int if arg in ("dport", "port") else str)
        for option, default in options.items():
            a.add_argument(f"--{option.replace('_', '-')}", dest=option, type=type(default), default=default)
    ns = vars(p.parse_args())
    func = PROBES[ns.pop("probe")][0]
    print(json.dumps(func(**ns)), flush=True)


if __name__ == "__main__":
    main()
