"""Listening probes for the live tests, returned only once their socket is bound."""

from __future__ import annotations

import sys
import time

from conformance import apps

LISTEN_TIMEOUT_S = 10
SERVICE_S = 120  # the listeners outlive a test; leaving the ``with`` block stops them


def probe_service(host, transport: str, port: int, *args: str | int) -> apps.Service:
    """A listening probe (udp-echo, tcp-sink) in ``host``, returned once ``ss`` shows its socket bound: a
    datagram or SYN sent before would meet a closed port (ECONNREFUSED, or a RST that nmap reads as "closed")."""
    argv = [sys.executable, "-m", "conformance.probes", *map(str, args), "--seconds", str(SERVICE_S)]
    service = apps.Service(host, argv, settle=0)
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while not host.cmd(f"ss -Hn{transport[0]}l 'sport = :{port}'").strip():
        assert service.proc.poll() is None and time.monotonic() < deadline, f"{args} never listened in {host.name}"
        time.sleep(0.05)
    return service
