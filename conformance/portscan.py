"""Port scans by nmap (Debian's, a scanner nobody here wrote): its command line and its XML report, sans-IO.

The live test runs the command in a Mininet host (srv2, a stranger on the
outside); this module only builds the argument list and reads the ``-oX``
report back, so the reading is unit-tested on crafted reports.

How nmap labels a port (nmap(1), "Port scanning basics"):

- TCP SYN scan: "open" needs a SYN/ACK, "closed" a RST, "filtered" is silence
  or an ICMP unreachable. A NAT with no entry for the port drops silently
  (RFC 4787 REQ-8 filtering), so every port must come back "filtered".
- UDP scan: "open" needs a UDP answer, "closed" an ICMP port unreachable.
  Silence is "open|filtered": UDP (RFC 768) has no handshake, so a listener
  that keeps quiet and a NAT that drops look the same to nmap. That is why the
  test counts only "open" as found, and proves the silence is a drop by
  capturing on every client: nothing from the scanner may arrive there.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__pure__ = True

ALL_TCP_PORTS = (1, 65535)
# nmap's --min-rate: probes per second. 20,000 scans 2 x 65,535 TCP ports in about 14 s on a 2-core machine
# through userspace OVS; the control (a port opened on purpose) shows it still finds what is open.
MIN_RATE = 20000
MAX_RETRIES = 1


class ScanError(ValueError):
    """The report is not a complete nmap run over what was asked."""


@dataclass(frozen=True)
class Port:
    """One port nmap listed with its own state (not folded into "extraports")."""

    address: str
    protocol: str  # "tcp" | "udp"
    port: int
    state: str  # "open", "closed", "filtered", "open|filtered", ...
    reason: str


@dataclass(frozen=True)
class HostReport:
    """What nmap said about one address: its listed ports and how many ports it accounted for per protocol."""

    address: str
    ports: tuple[Port, ...]
    counted: dict[str, int]  # protocol -> ports listed + ports folded into extraports


def nmap_argv(targets: Iterable[str], tcp_ports: tuple[int, int], udp_ports: Iterable[int], xml_path: str,
              *, min_rate: int = MIN_RATE, max_retries: int = MAX_RETRIES) -> list[str]:
    """A TCP SYN + UDP scan of ``targets`` writing XML to ``xml_path``.

    -Pn: the global addresses answer no ping (nothing is open), so host discovery would skip them.
    -n: no DNS. --min-rate/--max-retries bound the run time; the control proves they still find an open port.
    """
    udp = ",".join(str(p) for p in sorted(set(udp_ports)))
    return ["nmap", "-n", "-Pn", "-sS", "-sU", "-p", f"T:{tcp_ports[0]}-{tcp_ports[1]},U:{udp}",
            "--min-rate", str(min_rate), "--max-retries", str(max_retries), "-oX", xml_path, *targets]


def top_udp_ports(services: str, count: int) -> list[int]:
    """The ``count`` UDP ports nmap's own ``nmap-services`` file rates most often open (what --top-ports uses)."""
    rated = []
    for line in services.splitlines():
        fields = line.split("\t")
        if line.startswith("#") or len(fields) < 3 or not fields[1].endswith("/udp"):
            continue
        rated.append((float(fields[2]), int(fields[1].split("/")[0])))
    return [port for _, port in sorted(rated, key=lambda r: (-r[0], r[1]))[:count]]


def read_report(xml_text: str) -> list[HostReport]:
    """Every host of an nmap ``-oX`` report; :class:`ScanError` if the run did not finish successfully."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        raise ScanError(f"not an nmap XML report: {e}") from None
    finished = root.find("runstats/finished")
    if root.tag != "nmaprun" or finished is None or finished.get("exit") != "success":
        raise ScanError("nmap did not finish successfully (no runstats/finished exit=success)")
    return [_host(h) for h in root.findall("host")]


def _host(host: ET.Element) -> HostReport:
    """One <host>: its IPv4 address, listed ports, and the per-protocol port count including extraports."""
    address = next((a.get("addr", "") for a in host.findall("address") if a.get("addrtype") == "ipv4"), "")
    ports: list[Any] = []
    counted: dict[Any, Any] = {}
    for p in host.findall("ports/port"):
        state = p.find("state")
        ports.append(Port(address, p.get("protocol", ""), int(p.get("portid", "0")),
                          state.get("state", "") if state is not None else "",
                          state.get("reason", "") if state is not None else ""))
        counted[ports[-1].protocol] = counted.get(ports[-1].protocol, 0) + 1
    for extra in host.findall("ports/extraports"):
        for reasons in extra.findall("extrareasons"):
            proto = reasons.get("proto", "")
            counted[proto] = counted.get(proto, 0) + int(reasons.get("count", "0"))
    return HostReport(address, tuple(ports), counted)


def found_open(reports: Iterable[HostReport]) -> set[tuple[str, str, int]]:
    """(address, protocol, port) of every port nmap found "open": a SYN/ACK or a UDP answer."""
    return {(p.address, p.protocol, p.port) for r in reports for p in r.ports if p.state == "open"}
