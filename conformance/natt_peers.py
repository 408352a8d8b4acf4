"""NAT-T peers for the baseline (issue 15): natlab agents keyed by IKE in tunnel mode, and what a wire shows.

The baseline scenarios (:mod:`conformance.scenarios.baseline`) and ``natlab bench compare`` run the
same peers: natlab's agent on h1 initiating to natlab's agent (or strongSwan's charon) on srv1, ESP
AES-GCM-128 in tunnel mode, NAT-T found by IKE's NAT detection (RFC 7296 section 2.23) and carried
in UDP/4500 (RFC 3948). :func:`natt_wire` reads a capture of srv1's link with tshark (a dissector
nobody here wrote): ESP inside UDP/4500 each way, raw ESP, private sources, one-byte keepalives, and
every ESP ICV checked with the keys the agents logged.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from client_agent.ipsec.udpencap import KEEPALIVE, NATT_PORT, UDP_HEADER_LEN
from conformance.apps import serving, web_server
from conformance.evidence import read_pcap
from conformance.oracles import tshark_summary, tshark_verdicts
from netwire.ipv4 import IPPROTO_ESP
from netwire.plan import INSIDE_NET, client_ip, global_ips, server_ip
from topo.charon import INNER

PSK = "natlab NAT-T baseline pre-shared key"
IKE_PROPOSAL = "aes128-sha256-modp2048"
ESP_PROPOSAL = "aes128gcm16"  # AES-GCM-128 (RFC 4106), what every variant of the comparison uses
TUN_MTU = 1400  # libipsec's ipsec0 MTU: every variant's inner MTU, so that all carry the same packets
NAT_ADDRESS = global_ips(1)[0]  # the clients' address as srv1 sees it, through the NAPT or the classic NAT


def agent_config(side: str, *, keepalive: float, inner: bool = False, mtu: int = TUN_MTU, mode: str = "tunnel",
                 clients: int = 1, esp: str = ESP_PROPOSAL, ah: str = "") -> str:
    """The TOML of natlab's NAT-T agent on ``side`` (h1..hN initiate, srv1 responds).

    ``inner``: selectors on the :data:`topo.charon.INNER` addresses (the peer is strongSwan, whose
    libipsec routes must not cover the IKE peers); otherwise the hosts' own addresses. A responder
    for ``clients`` > 1 takes any initiator of the inside network (selectors narrowed to each, RFC
    7296 section 2.9) and no fixed remote identity.
    """
    own = server_ip(1) if side == "srv1" else client_ip(int(side[1:]))
    other = "h1" if side == "srv1" else "srv1"
    mine, theirs = (INNER[side], INNER[other]) if inner else (own, server_ip(1) if other == "srv1" else client_ip(1))
    remote = f"{theirs}/32" if side != "srv1" or clients == 1 else INSIDE_NET
    route = f"{NAT_ADDRESS}/32" if side == "srv1" and mode == "transport" and not inner else remote
    if side == "srv1":
        ike = 'role = "responder"\n' + ('remote_id = "h1.natlab"\n' if clients == 1 else "")
    else:
        ike = f'role = "initiator"\npeer = "{server_ip(1)}"\nremote_id = "srv1.natlab"\n'
    child = f'ah = ["{ah}"]\n' if ah else f'esp = ["{esp}"]\n'
    return (f'[agent]\nname = "{side}"\nroutes = ["{route}"]\naddress = "{own}"\nmtu = {mtu}\n\n'
            f'[ike]\n{ike}local_id = "{side}.natlab"\npsk = "{PSK}"\nproposals = ["{IKE_PROPOSAL}"]\n{child}'
            f'mode = "{mode}"\nlocal_ts = ["{mine}/32"]\nremote_ts = ["{remote}"]\nkeepalive = {keepalive:g}\n')


# iperf3 -n stops once IPERF3_BYTES are written, and the receiver reports what it had read by then: all but what
# was still in the sender's socket buffer or unread in the receiver's. With autotuned buffers that was
# anything from 1.0 to 1.4 MB of 2 MiB (fresh-clone CI run 7: 1,004,672 bytes); -w 64K caps both buffers at
# 128 KiB (the kernel doubles SO_SNDBUF/SO_RCVBUF), so at least 2 MiB - 256 KiB must have arrived.
IPERF3_BYTES, IPERF3_WINDOW, IPERF3_FLOOR = "2M", "64K", 2 * 1024 * 1024 - 256 * 1024
WAYS = ("h1->srv1", "srv1->h1")


def iperf3_received(out: str) -> int | str:
    """What ``iperf3 -J`` says the receiving side got, or what it said instead (its error, or its last words)."""
    try:
        report = json.loads(out[out.index("{"):])
    except ValueError:
        return out.strip()[-300:] or "no output"
    received = report.get("end", {}).get("sum_received", {}).get("bytes")
    return int(received) if received is not None else str(report.get("error", "no report of bytes received"))


def both_ways(h1, srv1, www: Path, h1_inner: str, srv1_inner: str) -> dict[str, str | int]:
    """Unmodified ping, curl and iperf3 between the tunnel's inner addresses, each started from either side:
    ping's summary, the body curl fetched from ``www``, the bytes iperf3's receiver counted."""
    seen: dict[str, str | int] = {
        "ping h1->srv1": h1.cmd(f"ping -n -c 3 -W 2 -I {h1_inner} {srv1_inner}"),
        "ping srv1->h1": srv1.cmd(f"ping -n -c 3 -W 2 -I {srv1_inner} {h1_inner}"),
    }
    for server, client, there, here in ((srv1, h1, srv1_inner, h1_inner), (h1, srv1, h1_inner, srv1_inner)):
        with web_server(server, there, www):
            seen[f"curl {client.name}->{server.name}"] = client.cmd(
                f"curl -s --max-time 10 --interface {here} http://{there}:8000/secret.txt")
    for flag, way in (("", "h1->srv1"), ("-R", "srv1->h1")):  # a server per test: one still closing is "busy"
        with serving(srv1, ["iperf3", "-s", "-1", "-B", srv1_inner], srv1_inner, 5201):
            seen[f"iperf3 {way}"] = iperf3_received(h1.cmd(
                f"iperf3 -c {srv1_inner} -B {h1_inner} -n {IPERF3_BYTES} -w {IPERF3_WINDOW} {flag} -J"))
    return seen


def both_ways_checks(seen: dict[str, str | int], body: str) -> list[tuple[bool, str]]:
    """Each of :func:`both_ways`' applications, each way: ping lost nothing, curl got ``body``, iperf3's
    receiver counted at least IPERF3_FLOOR bytes."""
    checks = []
    for way in WAYS:
        ping, curl, iperf3 = seen.get(f"ping {way}", ""), seen.get(f"curl {way}", ""), seen.get(f"iperf3 {way}", "")
        checks += [(" 0% packet loss" in str(ping), f"ping {way}: {str(ping).strip()[-120:] or 'no output'}"),
                   (str(curl).strip() == body, f"curl {way} did not fetch the marker file"),
                   (isinstance(iperf3, int) and iperf3 >= IPERF3_FLOOR,
                    f"iperf3 {way}: the receiver counted {iperf3} bytes, under {IPERF3_FLOOR}"
                    if isinstance(iperf3, int) else f"iperf3 {way}: {iperf3}")]
    return checks


def wait_for_child(agent, timeout: float = 15) -> bool:
    """Until the agent's status shows a negotiated CHILD_SA (False at ``timeout``: the judges then fail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (agent.status().get("ike") or {}).get("children", 0) >= 1:
            return True
        time.sleep(0.2)
    return False


def write_config(folder: Path, side: str, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{side}-natt.toml"
    path.write_text(agent_config(side, **kw))
    return path


@dataclass(frozen=True)
class NattWire:
    """What srv1's link carried, as tshark and scapy read it (never the agents' own account)."""

    esp_in_udp_to_srv1: int = 0  # ESP inside UDP to srv1:4500
    esp_in_udp_from_srv1: int = 0  # ESP inside UDP from srv1:4500
    raw_esp: int = 0  # IP protocol 50 frames
    private_sources: int = 0  # frames from an inside (private) address: the NAT did not translate
    keepalives: int = 0  # one-byte 0xFF UDP/4500 payloads to srv1 (RFC 3948 section 2.3)
    icv_good: int = 0
    icv_bad: int = 0
    icv_unverified: int = 0
    marker_seen: bool = False  # the application's payload in clear on the wire


def udp_rows(pcap: Path) -> list[list[str]]:
    """tshark's UDP/4500 frames: source, destination, ports, UDP length, ESP SPI, payload, keepalive flag."""
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-Y", f"udp.port == {NATT_PORT}", "-T", "fields",
                          "-E", "separator=/t", "-e", "ip.src", "-e", "ip.dst", "-e", "udp.srcport", "-e", "udp.dstport",
                          "-e", "udp.length", "-e", "esp.spi", "-e", "udp.payload", "-e", "udpencap.nat_keepalive"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [(line.split("\t") + [""] * 8)[:8] for line in out.splitlines()]


def wildcard_keys(keys: Path, folder: Path) -> Path:
    """A copy of ``keys/esp_sa`` with "*" for both addresses: an SA logged behind the NAT names the private
    address, which srv1's wire never shows; the SPI alone picks the SA (RFC 4303 section 2.1)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = (keys / "esp_sa").read_text().splitlines() if (keys / "esp_sa").exists() else []
    (folder / "esp_sa").write_text("".join(re.sub(r'^"IPv4","[^"]*","[^"]*"', '"IPv4","*","*"', line) + "\n"
                                           for line in lines))
    return folder


def natt_wire(pcap: Path, keys: Path, marker: bytes = b"") -> NattWire:
    """Read srv1's capture; ``keys`` is a folder with an ``esp_sa`` that covers both directions."""
    keys = wildcard_keys(keys, pcap.parent / "tshark-keys")
    rows = udp_rows(pcap)
    srv1, port = server_ip(1), str(NATT_PORT)
    keepalive_len = str(UDP_HEADER_LEN + len(KEEPALIVE))
    summary = tshark_summary(tshark_verdicts(pcap, keys))
    frames = read_pcap(pcap)
    return NattWire(
        esp_in_udp_to_srv1=sum(1 for r in rows if r[1] == srv1 and r[3] == port and r[5]),
        esp_in_udp_from_srv1=sum(1 for r in rows if r[0] == srv1 and r[2] == port and r[5]),
        raw_esp=sum(1 for p in frames if p.proto == IPPROTO_ESP),
        private_sources=sum(1 for p in frames if _inside(p.src)),
        keepalives=sum(1 for r in rows if r[1] == srv1 and r[4] == keepalive_len and r[6] == KEEPALIVE.hex()),
        icv_good=summary.esp_icv_good, icv_bad=summary.esp_icv_bad, icv_unverified=summary.esp_unverified,
        marker_seen=bool(marker) and marker in pcap.read_bytes(),
    )


def _inside(address: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(INSIDE_NET)


def natt_checks(wire: NattWire) -> list[tuple[bool, str]]:
    """The capture judges of NAT-T: ESP only inside UDP/4500 both ways, no private source, keepalives,
    every ESP ICV good by tshark (RFC 4303 3.4.4), the payload never in clear."""
    esp = wire.esp_in_udp_to_srv1 + wire.esp_in_udp_from_srv1
    return [
        (wire.esp_in_udp_to_srv1 > 0 and wire.esp_in_udp_from_srv1 > 0,
         f"ESP-in-UDP/4500 on srv1's wire: {wire.esp_in_udp_to_srv1} to srv1, {wire.esp_in_udp_from_srv1} from it"),
        (wire.raw_esp == 0, f"{wire.raw_esp} raw ESP frames (IP protocol 50) on srv1's wire"),
        (wire.private_sources == 0, f"{wire.private_sources} frames from a private address reached srv1"),
        (wire.keepalives > 0, f"{wire.keepalives} NAT-keepalives (one 0xFF byte) seen"),
        (esp > 0 and wire.icv_good >= esp and wire.icv_bad == 0,
         f"tshark: {wire.icv_good} ESP ICVs good, {wire.icv_bad} bad, {wire.icv_unverified} unverified, of {esp}"),
        (not wire.marker_seen, "the application's payload crossed srv1's wire in clear"),
    ]
