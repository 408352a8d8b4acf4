"""How a matrix cell was keyed, shown with evidence a stranger can check, and judged.

An IKE-keyed cell (``conformance.matrix.ike_behind_nat``) has no keys in its
configs: the agents negotiate them and write them down as they go, Wireshark's
``esp_sa`` and ``ikev2_decryption_table`` and natlab's ``ah_sa`` (AH has no
Wireshark key table). :func:`await_keys` waits for every client's first
CHILD_SA and reads its SAs back from those files, so the oracles check the
captures with the keys the agents wrote, never with keys of the suite's own.

:func:`judge_keying` says how the cell was keyed and must be able to fail:
a cell claimed IKE-keyed needs, per client, the agent's own IkeEstablished and
ChildEstablished events (``agent.log``), an SPIi that the NAT's table shows
leased to that client (the seed's cookie, FIG. 8 step 801) and CHILD SPIs
that are the ones its packets carried; the responder's events with no NAT
seen (NAT-D over the global address); and tshark, given the responder's
``ikev2_decryption_table``, opening each client's IKE_AUTH on the responder's
wire (its identity and its CHILD SPI inside). A cell claimed manually keyed
needs every SA in the agents' configs and no IKE at all on the peer's wire.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from client_agent.agent_config import INBOUND, OUTBOUND, SAConfig
from client_agent.ike.keyfile import FILENAME as IKE_KEYFILE
from client_agent.ike.registry import IKE_PORT
from client_agent.ipsec.keyfile import AH_FILENAME, FILENAME, parse_key_file
from client_agent.ipsec.sa import Mode, Protocol
from nat_app.gpn import GpnSpace
from nat_app.table import space_of_record

KEYS_TIMEOUT_S = 15.0  # the NAT's slow path answers IKE in milliseconds; retransmission starts at 1 s
ISAKMP = GpnSpace.udp(IKE_PORT)  # the cookie's GPN space (netwire.pcp.ISAKMP_DEFINITION)
TSHARK_FIELDS = ("ip.src", "ip.dst", "udp.srcport", "isakmp.ispi", "isakmp.exchangetype", "isakmp.id.data.fqdn",
                 "isakmp.spi")
IKE_SA_INIT, IKE_AUTH = "34", "35"  # RFC 7296 3.1 exchange types, as tshark prints them


def key_file(protocol: str) -> str:
    """The file an agent writes ``protocol``'s keys to ("esp" or "ah")."""
    return FILENAME if protocol == "esp" else AH_FILENAME


def key_files(protocol: str) -> tuple[str, str]:
    """Every key file an IKE-keyed agent writes for a cell of ``protocol``: its CHILD_SAs', its IKE SAs'."""
    return key_file(protocol), IKE_KEYFILE


def await_keys(run_dirs: dict[str, Path], protocol: str, mode: str, peer_ip: str,
               timeout: float = KEYS_TIMEOUT_S) -> dict[str, tuple[SAConfig, SAConfig]]:
    """Each client's (outbound, inbound) SA as its agent wrote them, once every client has its first CHILD_SA.

    The agent writes its key files right after installing an SA in its SAD, so a
    pair in the file is a pair in use. RuntimeError names the clients still
    without keys at ``timeout`` (then the agents' logs say why)."""
    deadline = time.monotonic() + timeout
    while True:
        found = {name: _pair(folder / key_file(protocol), protocol, mode, peer_ip) for name, folder in run_dirs.items()}
        missing = [name for name, pair in found.items() if pair is None]
        if not missing:
            return {name: pair for name, pair in found.items() if pair is not None}
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no CHILD_SA within {timeout:.0f} s for {missing}")
        time.sleep(0.05)


def _pair(path: Path, protocol: str, mode: str, peer_ip: str) -> tuple[SAConfig, SAConfig] | None:
    """The first (outbound, inbound) SAs of a client's key file: outbound goes to the peer, inbound comes from it."""
    try:
        sas = parse_key_file(path.read_text(), Protocol.ESP if protocol == "esp" else Protocol.AH, Mode(mode))
    except (OSError, ValueError):
        return None  # not written yet, or caught half-written: read again
    out = [sa for sa in sas if sa.dst == peer_ip]
    into = [sa for sa in sas if sa.src == peer_ip]
    if not out or not into:
        return None
    return SAConfig(f"ike-out-{out[0].spi:08x}", OUTBOUND, out[0]), SAConfig(f"ike-in-{into[0].spi:08x}", INBOUND,
                                                                            into[0])


# ----------------------------------------------------------------------------- evidence


@dataclass
class AgentKeying:
    """One client's side of the keying: its config, its IKE events, the SPIs its packets used."""

    name: str
    private_ip: str
    global_ip: str
    config_sas: int  # [[sa]] tables in its config
    config_ike: bool  # an [ike] table in its config
    events: list[dict]  # its agent's IKE events (agent.log), in order
    spi_in: int  # the SPIs the oracles found its packets under
    spi_out: int
    packets_at_peer: int  # its ESP/AH packets at the peer that verified with those SAs


@dataclass
class KeyingEvidence:
    """What :func:`judge_keying` reads for one cell."""

    claimed: str  # "ike" | "manual"
    protocol: str  # "ESP" | "AH", as IKE's events name it
    mode: str
    clients: list[AgentKeying]
    responder_events: list[dict] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)  # the NAT's entries while the agents held their leases
    ike_rows: list[dict] = field(default_factory=list)  # tshark's IKE rows on the peer's wire, decrypted


def agent_events(log: Path) -> list[dict]:
    """The IKE events an agent logged (``ike: {json}`` lines of its IKE shell)."""
    events = []
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        _, found, text = line.partition(" ike: ")
        if found and text.startswith("{"):
            try:
                events.append(json.loads(text))
            except ValueError:
                continue
    return events


def ike_rows(pcap: Path, keys: Path) -> list[dict]:
    """tshark's IKEv2 dissector on ``pcap``, decrypting with the ``ikev2_decryption_table`` in ``keys``."""
    command = ["tshark", "-n", "-r", str(pcap), "-Y", "isakmp", "-T", "fields", "-E", "separator=/t"]
    for name in TSHARK_FIELDS:
        command += ["-e", name]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60,
                         env={"WIRESHARK_CONFIG_DIR": str(keys), "PATH": "/usr/bin:/bin"}).stdout
    return [dict(zip(TSHARK_FIELDS, line.split("\t"), strict=False)) for line in out.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- the judge

Check = tuple[bool, str]


def judge_keying(ev: KeyingEvidence) -> tuple[list[Check], str]:
    """The checks that the cell was keyed as ``ev.claimed`` says, and the sentence saying how."""
    if ev.claimed == "ike":
        checks = [c for client in ev.clients for c in _ike_client(ev, client)] + _ike_responder(ev)
        spis = {c.name: _spi_i(c) for c in ev.clients}
        how = (f"keyed by IKEv2: SPIi (leased cookies) {spis}; CHILD SPIs in/out "
               f"{ {c.name: f'{c.spi_in:08x}/{c.spi_out:08x}' for c in ev.clients} }; tshark opened "
               f"{len([r for r in ev.ike_rows if r.get('isakmp.exchangetype') == IKE_AUTH])} IKE_AUTH messages "
               "with the responder's ikev2_decryption_table")
        return checks, how
    checks = [c for client in ev.clients for c in _manual_client(client)]
    checks.append((not ev.ike_rows, f"{len(ev.ike_rows)} IKE messages on the peer's wire"))
    return checks, f"keyed manually: {sum(c.config_sas for c in ev.clients)} [[sa]] tables in the clients' configs"


def _spi_i(client: AgentKeying) -> str:
    up = [e for e in client.events if e.get("event") == "IkeEstablished"]
    return up[0].get("spi_i", "") if up else ""


def _ike_client(ev: KeyingEvidence, c: AgentKeying) -> list[Check]:
    """One client: its agent negotiated (events), its SPIi was a leased cookie, its packets used its CHILD SPIs."""
    children = [e for e in c.events if e.get("event") == "ChildEstablished" and e.get("protocol") == ev.protocol
                and e.get("mode") == ev.mode]
    spi_i = _spi_i(c)
    cookies = {f"{e['global_gpn']:016x}" for e in ev.table if _is_cookie(e, c)}
    auth = [r for r in ev.ike_rows if r.get("isakmp.ispi") == spi_i and r.get("isakmp.exchangetype") == IKE_AUTH]
    return [
        (c.config_ike and c.config_sas == 0, f"{c.name}: its config has {c.config_sas} [[sa]] tables, "
                                             f"[ike] {'present' if c.config_ike else 'absent'}"),
        (bool(children) and any(e.get("inbound_spi") == f"{c.spi_in:08x}" and e.get("outbound_spi") ==
                                f"{c.spi_out:08x}" for e in children),
         f"{c.name}: no ChildEstablished ({ev.protocol} {ev.mode}) in its agent's log for SPIs "
         f"{c.spi_in:08x}/{c.spi_out:08x}"),
        (bool(spi_i) and spi_i in cookies, f"{c.name}: SPIi {spi_i or 'none'} is not a cookie the NAT leased to it "
                                           f"on {c.global_ip} ({sorted(cookies)})"),
        (any(f"{c.name}.natlab" in r.get("isakmp.id.data.fqdn", "") for r in auth),
         f"{c.name}: tshark opened no IKE_AUTH with its identity under SPIi {spi_i or 'none'}"),
        (any(f"{c.spi_in:08x}" in r.get("isakmp.spi", "").replace(":", "") for r in auth),
         f"{c.name}: its CHILD SPI {c.spi_in:08x} is in none of its IKE_AUTH messages"),
        (c.packets_at_peer > 0, f"{c.name}: none of its packets at the peer verified under the negotiated SAs"),
    ]


def _is_cookie(entry: dict, c: AgentKeying) -> bool:
    try:
        space = space_of_record(entry)
    except (KeyError, TypeError, ValueError):
        return False
    return (space == ISAKMP and entry.get("private_ip") == c.private_ip and entry.get("global_ip") == c.global_ip
            and isinstance(entry.get("global_gpn"), int))


def _ike_responder(ev: KeyingEvidence) -> list[Check]:
    """The responder established an IKE SA for every client's SPIi and saw no NAT; on its wire IKE_SA_INIT
    used port 500 only (no floating to 4500) and no private address."""
    up = [e for e in ev.responder_events if e.get("event") == "IkeEstablished"]
    wanted = {_spi_i(c) for c in ev.clients}
    inits = [r for r in ev.ike_rows if r.get("isakmp.exchangetype") == IKE_SA_INIT and r.get("isakmp.ispi") in wanted]
    private = {c.private_ip for c in ev.clients}
    return [
        (bool(up) and wanted <= {e.get("spi_i") for e in up}, f"the responder established IKE SAs "
                                                              f"{sorted(str(e.get('spi_i')) for e in up)}, not all of "
                                                              f"{sorted(wanted)}"),
        (bool(up) and not any(e.get("nat_peer") or e.get("nat_local") for e in up),
         "the responder detected a NAT (NAT-D not over the global address)"),
        (bool(inits) and {r.get("udp.srcport") for r in inits} == {str(IKE_PORT)},
         f"IKE_SA_INIT on the peer's wire from ports {sorted({str(r.get('udp.srcport')) for r in inits})}"),
        (not any(r.get("ip.src") in private for r in ev.ike_rows), "a private address reached the peer's wire"),
    ]


def _manual_client(c: AgentKeying) -> list[Check]:
    return [
        (c.config_sas >= 2 and not c.config_ike, f"{c.name}: its config has {c.config_sas} [[sa]] tables, "
                                                 f"[ike] {'present' if c.config_ike else 'absent'}"),
        (not c.events, f"{c.name}: its agent logged {len(c.events)} IKE events"),
        (c.packets_at_peer > 0, f"{c.name}: none of its packets at the peer verified under its configured SAs"),
    ]
