"""Unmodified applications run in Mininet hosts: curl, python3 -m http.server,
iperf3, ping, and the kernel-socket probes. Each returns what it observed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Service:
    """A server process in a host, stopped on exit from the ``with`` block."""

    def __init__(self, host, argv: list[str], settle: float = 0.3) -> None:
        self.proc = host.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(settle)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def http_server(host, ip: str, port: int = 8000) -> Service:
    return Service(host, [sys.executable, "-m", "http.server", str(port), "--bind", ip], settle=0.8)


def iperf3_server(host, port: int = 5201) -> Service:
    return Service(host, ["iperf3", "-s", "-p", str(port)])


def curl(host, url: str, timeout: float = 10) -> int:
    """The HTTP status code curl got (0 if none)."""
    out = host.cmd(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time {timeout} {url}")
    match = re.search(r"(\d{3})\s*$", out)
    return int(match.group(1)) if match else 0


def iperf3(host, dst: str, port: int = 5201, seconds: float = 2, udp_rate: str | None = None) -> dict:
    """iperf3 client summary: bits/s and what reached the far end (bytes for TCP, packets for UDP)."""
    udp = f"-u -b {udp_rate}" if udp_rate else ""
    out = host.cmd(f"iperf3 -c {dst} -p {port} -t {seconds} {udp} -J")
    try:
        summary = json.loads(out[out.index("{"):])
        end = summary["end"]
    except (ValueError, KeyError):
        return {"bps": 0.0, "received": 0, "error": out.strip()[-300:]}
    if "error" in summary:  # e.g. "the server is busy running a test": the JSON has an empty "end"
        return {"bps": 0.0, "received": 0, "error": summary["error"]}
    if udp_rate:
        s = end["sum"]
        return {"bps": s.get("bits_per_second", 0.0), "received": s.get("packets", 0) - s.get("lost_packets", 0),
                "unit": "packets"}
    return {"bps": end["sum_received"]["bits_per_second"], "received": end["sum_received"]["bytes"], "unit": "bytes"}


def ping(host, dst: str, count: int = 3) -> tuple[int, int]:
    """(sent, received) of ``ping -c count``."""
    out = host.cmd(f"ping -n -c {count} -i 0.2 -W 1 {dst}")
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    return (int(match.group(1)), int(match.group(2))) if match else (count, 0)


# TCP states in which a host still waits for its peer to acknowledge a FIN (RFC 9293 section 3.3.2)
UNACKNOWLEDGED_FIN = ("fin-wait-1", "closing", "last-ack")


def closes_acknowledged(host, timeout: float = 3.0) -> bool:
    """Until no TCP connection of ``host`` waits for its FIN to be acknowledged (False at ``timeout``).

    curl exits once it has sent its FIN; stopping the IPsec agents at that moment can drop the peer's
    ACK, and the kernel then retransmits the FIN in clear over a path with no SA (fresh-clone CI run 8)."""
    states = " ".join(f"state {name}" for name in UNACKNOWLEDGED_FIN)
    deadline = time.monotonic() + timeout
    while host.cmd(f"ss -Htn {states}").strip():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def probe(host, *args: str | int | float) -> dict:
    """Run ``python -m conformance.probes ARGS`` in ``host``; its JSON answer."""
    argv = " ".join(str(a) for a in args)
    out = host.cmd(f"{sys.executable} -m conformance.probes {argv}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"probe {argv} in {host.name} printed no answer: {out.strip()[-300:]}")
    return json.loads(lines[-1])


@contextmanager
def serving(host, argv: list[str], address: str, port: int, timeout: float = 10.0) -> Iterator[None]:
    """A server process in ``host``, the block entered only once ``address:port`` is listening: a fixed
    settle time loses the first connection whenever the machine is busy. Its output goes to a log whose
    tail a failure shows."""
    with tempfile.TemporaryFile() as log:
        proc = host.popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while f"{address}:{port}" not in host.cmd(f"ss -Hltn src {address}"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"{argv} in {host.name} never listened on {address}:{port} (exit "
                                         f"{proc.poll()}): {log.read()[-1500:].decode(errors='replace')}")
                time.sleep(0.05)
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=5)


# http.server's HTTPServer.server_bind asks for the bound address's FQDN (a reverse DNS lookup) before it
# listens; in a client behind the NAT that query dies silently at r1 and the server stays deaf for the
# resolver's timeouts (measured: not listening after 10 s in h1). The same server, named by its address.
_HTTP = ("import functools, http.server as h, socketserver, sys\n"
         "class Server(h.ThreadingHTTPServer):\n"
         "    def server_bind(self):\n"
         "        socketserver.TCPServer.server_bind(self)\n"
         "        self.server_name, self.server_port = self.server_address[:2]\n"
         "handler = functools.partial(h.SimpleHTTPRequestHandler, directory=sys.argv[3])\n"
         "Server((sys.argv[1], int(sys.argv[2])), handler).serve_forever()\n")


def web_server(host, address: str, www: Path, port: int = 8000):
    """Python's http.server serving ``www`` on ``address:port`` in ``host``, without the reverse lookup."""
    return serving(host, [sys.executable, "-c", _HTTP, address, str(port), str(www)], address, port)
