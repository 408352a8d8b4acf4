"""The agent keyed by IKE: its ``[ike]`` table, validated, and the SAD/SPD changes IKE events make; pure.

Instead of ``[[sa]]`` and ``[[policy]]`` tables with manual keys, an agent
config may carry one ``[ike]`` table; the agent then negotiates its CHILD_SAs
with IKEv2 (:mod:`client_agent.ike`) and installs them as they come::

    [ike]
    role = "initiator"               # or "responder" (the peers, srv1 and sgw1, answer)
    peer = "203.0.113.100"           # the initiator's responder; a responder may leave it out
    local_id = "h1.natlab"           # fqdn:, rfc822:, ipv4: or bare (type guessed)
    remote_id = "srv1.natlab"        # optional: refuse any other peer identity
    psk = "a shared secret"          # or psk_file = "/path/to/file" (at least 8 bytes)
    proposals = ["aes128-sha256-modp2048"]   # IKE SA: strongSwan keywords or IANA names
    esp = ["aes128gcm16"]            # CHILD_SA proposals: esp = [...] or ah = [...]
    mode = "transport"               # or "tunnel"
    local_ts = ["10.0.0.1/32"]       # traffic selectors (narrowed by the responder, RFC 7296 2.9)
    remote_ts = ["203.0.113.100/32"]
    child_rekey = 3600               # optional: seconds before the initiator rekeys the CHILD_SA
    ike_rekey = 14400                # optional: seconds before the initiator rekeys the IKE SA (2.18)
    liveness = 30                    # optional: seconds of silence before an empty INFORMATIONAL
    natd = true                      # optional: send NAT detection payloads
    natd_global = true               # optional, with [nat]: NAT-D over the leased global address (claim 8's
                                     #   pre-compensation, for IKE); false computes it over the private one

With ``[nat]`` the agent leases its IKE SPI (the seed's cookie, FIG. 8 step
801) and a pool of inbound CHILD SPIs (step 802) on the global IP before
IKE_SA_INIT; ``local_ts`` then names the global IP, what the peer sees.

A mistake raises :class:`~client_agent.agent_config.ConfigError` naming the
field and its value. :class:`IkeKeying` turns IKE events into SAD entries and
SPD policies (one per pair of selector prefixes) and back out again.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from client_agent.ike.codec import TrafficSelector
from client_agent.ike.config import Identity, IkeConfig
from client_agent.ike.events import ChildDeleted, ChildEstablished, ChildSa, Event, IkeEstablished
from client_agent.ike.keyfile import ikev2_line, security_associations
from client_agent.ike.proposals import ChildSuite, child_suite, parse_proposal
from client_agent.ike.registry import ProtocolId
from client_agent.ike.selectors import parse_selector
from client_agent.ipsec.keyfile import ah_sa_file, esp_sa_file
from client_agent.ipsec.sa import Mode, Protocol, SAState, SecurityAssociation
from client_agent.ipsec.sad import SAD
from client_agent.ipsec.spd import SPD, Action, Policy, Selector
from client_agent.ipsec.udpencap import KEEPALIVE_INTERVAL, UDP_HEADER_LEN

IKE_FIELDS = {"role", "peer", "local_id", "remote_id", "psk", "psk_file", "proposals", "esp", "ah", "mode",
              "local_ts", "remote_ts", "child_rekey", "ike_rekey", "liveness", "natd", "natd_global",
              "force_encap", "keepalive"}
ROLES = ("initiator", "responder")


class IkeConfigError(ValueError):
    """A bad ``[ike]`` field; agent_config re-raises it as its ConfigError."""


@dataclass(frozen=True)
class IkeTable:
    """A validated ``[ike]`` table; :meth:`config` makes the session's :class:`IkeConfig`."""

    role: str
    peer: str | None
    local_id: str
    remote_id: str | None
    psk: bytes = field(repr=False)
    proposals: tuple[str, ...]
    esp: tuple[str, ...]
    ah: tuple[str, ...]
    mode: str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    child_rekey: float | None = None
    ike_rekey: float | None = None
    liveness: float | None = None
    natd: bool = True
    natd_global: bool = True  # with [nat]: NAT-D over the global address (false: the private one, a control)
    force_encap: bool = False  # NAT-T even without a NAT (RFC 7296 section 2.23, strongSwan's encap=yes)
    keepalive: float = KEEPALIVE_INTERVAL  # NAT-keepalive interval in seconds (RFC 3948 section 4)

    def config(self, natd_source: tuple[str, int] | None = None, own_ike_rekeys: bool = False) -> IkeConfig:
        """``own_ike_rekeys``: behind the extensible NAT, where only a leased SPI may become an SPIi."""
        return IkeConfig.build(local_id=self.local_id, remote_id=self.remote_id, psk=self.psk, ike=self.proposals,
                               esp=self.esp, ah=self.ah, local_ts=self.local_ts, remote_ts=self.remote_ts,
                               mode=self.mode, child_rekey=self.child_rekey, ike_rekey=self.ike_rekey,
                               liveness=self.liveness,
                               natd=self.natd, natd_source=natd_source, own_ike_rekeys=own_ike_rekeys,
                               force_encap=self.force_encap)

    def toml_fields(self) -> dict[str, Any]:
        """The table as ``[ike]`` fields that :func:`parse_ike` reads back to an equal table (the PSK inline:
        the file it may have come from is not kept); unset optional fields are left out."""
        fields: dict[str, Any] = {"role": self.role, "peer": self.peer, "local_id": self.local_id,
                                  "remote_id": self.remote_id, "psk": self.psk.decode()}
        fields = {k: v for k, v in fields.items() if v is not None}
        fields |= {k: list(getattr(self, k)) for k in ("proposals", "esp", "ah", "local_ts", "remote_ts")}
        fields |= {k: getattr(self, k) for k in ("child_rekey", "ike_rekey", "liveness") if getattr(self, k) is not None}
        return fields | {"mode": self.mode, "natd": self.natd, "natd_global": self.natd_global,
                         "force_encap": self.force_encap, "keepalive": self.keepalive}

    def largest_overhead(self, overhead: Callable[[SecurityAssociation], int]) -> int:
        """The most bytes any proposed CHILD_SA adds to a packet (for the TUN MTU), with NAT-T's UDP header when
        ESP is proposed: whether a NAT sits on the path is learnt only in IKE_SA_INIT (RFC 3948, RFC 7296 2.23)."""
        worst = 0
        for proposal in self.config().child_proposals:
            suite = child_suite(_first_of_each(proposal))
            worst = max(worst, overhead(_dummy_sa(suite, self.mode)))
        return worst + (UDP_HEADER_LEN if self.esp else 0)


def parse_ike(table: object, read_file: Callable[[str], bytes] = lambda p: Path(p).read_bytes()) -> IkeTable:
    """Validate ``[ike]``; every error names the field and its value."""
    if not isinstance(table, dict):
        raise IkeConfigError("[ike]: must be a table")
    unknown = sorted(set(table) - IKE_FIELDS)
    if unknown:
        raise IkeConfigError(f"[ike]: unknown field {unknown[0]!r} (known: {', '.join(sorted(IKE_FIELDS))})")
    role = _choice(table, "role", ROLES, "initiator")
    peer = _address(table["peer"], "peer") if "peer" in table else None
    if role == "initiator" and peer is None:
        raise IkeConfigError("[ike] peer: an initiator needs the responder's address")
    parsed = IkeTable(
        role=role, peer=peer, local_id=_identity(table, "local_id", required=True),
        remote_id=_identity(table, "remote_id", required=False), psk=_psk(table, read_file),
        proposals=_strings(table, "proposals", ["aes128-sha256-modp2048"]),
        esp=_strings(table, "esp", [] if "ah" in table else ["aes128gcm16"]), ah=_strings(table, "ah", []),
        mode=_choice(table, "mode", ("transport", "tunnel"), "transport"),
        local_ts=_strings(table, "local_ts", None), remote_ts=_strings(table, "remote_ts", None),
        child_rekey=_seconds(table, "child_rekey"), ike_rekey=_seconds(table, "ike_rekey"),
        liveness=_seconds(table, "liveness"),
        natd=_bool(table, "natd", True), natd_global=_bool(table, "natd_global", True),
        force_encap=_bool(table, "force_encap", False), keepalive=_seconds(table, "keepalive") or KEEPALIVE_INTERVAL,
    )
    _check_proposals(parsed)
    _check_encap(parsed)
    return parsed


def _check_proposals(parsed: IkeTable) -> None:
    for key, protocol in (("proposals", ProtocolId.IKE), ("esp", ProtocolId.ESP), ("ah", ProtocolId.AH)):
        for text in getattr(parsed, key):
            try:
                parse_proposal(text, protocol)
            except (ValueError, KeyError) as err:
                raise IkeConfigError(f"[ike] {key}: {text!r}: {err}") from None
    if not parsed.esp and not parsed.ah:
        raise IkeConfigError("[ike] esp/ah: at least one CHILD_SA proposal")
    for key in ("local_ts", "remote_ts"):
        for text in getattr(parsed, key):
            try:
                parse_selector(text)
            except (ValueError, KeyError) as err:
                raise IkeConfigError(f"[ike] {key}: {text!r}: {err}") from None


def _check_encap(parsed: IkeTable) -> None:
    """AH cannot be UDP-encapsulated (RFC 3948 is ESP only; AH's ICV covers the addresses a NAT rewrites)."""
    if parsed.force_encap and parsed.ah:
        raise IkeConfigError(f"[ike] force_encap=true with ah={list(parsed.ah)!r}: AH cannot be UDP-encapsulated "
                             "(NAT-T, RFC 3948, carries ESP only); drop ah or force_encap")
    if parsed.force_encap and not parsed.natd:
        raise IkeConfigError("[ike] force_encap=true with natd=false: encapsulation is forced through NAT-D")


def _choice(table: dict, key: str, choices: tuple[str, ...], default: str) -> str:
    value = table.get(key, default)
    if value not in choices:
        raise IkeConfigError(f"[ike] {key}={value!r}: must be one of {', '.join(choices)}")
    return value


def _address(value: object, key: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        raise IkeConfigError(f"[ike] {key}={value!r}: not an IPv4 address") from None


@overload
def _identity(table: dict, key: str, required: Literal[True]) -> str: ...


@overload
def _identity(table: dict, key: str, required: bool) -> str | None: ...


def _identity(table: dict, key: str, required: bool) -> str | None:
    value = table.get(key)
    if value is None and not required:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        Identity.parse(value)
    except ValueError as err:
        raise IkeConfigError(f"[ike] {key}={value!r}: {err}") from None
    return value


def _psk(table: dict, read_file: Callable[[str], bytes]) -> bytes:
    if ("psk" in table) == ("psk_file" in table):
        raise IkeConfigError("[ike] psk/psk_file: give exactly one")
    if "psk" in table:
        value = table["psk"]
        secret = value.encode() if isinstance(value, str) else b""
    else:
        try:
            secret = read_file(str(table["psk_file"])).strip()
        except OSError as err:
            raise IkeConfigError(f"[ike] psk_file={table['psk_file']!r}: {err.strerror or err}") from None
    if len(secret) < 8:
        raise IkeConfigError("[ike] psk: must be at least 8 bytes (its value is not shown)")
    return secret


def _strings(table: dict, key: str, default: list | None) -> tuple[str, ...]:
    value = table.get(key, default)
    if value is None:
        raise IkeConfigError(f"[ike] {key}: missing")
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise IkeConfigError(f"[ike] {key}={value!r}: must be a list of strings")
    return tuple(value)


def _seconds(table: dict, key: str) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400 * 7:
        raise IkeConfigError(f"[ike] {key}={value!r}: seconds, more than 0 and at most a week")
    return float(value)


def _bool(table: dict, key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise IkeConfigError(f"[ike] {key}={value!r}: must be true or false")
    return value


def _first_of_each(proposal: Any) -> Any:
    """One transform per type: the first of each, as a responder that takes our first choice would pick."""
    seen, picked = set(), []
    for t in proposal.transforms:
        if t.type not in seen:
            seen.add(t.type)
            picked.append(t)
    return type(proposal)(proposal.number, proposal.protocol, proposal.spi, tuple(picked))


def _dummy_sa(suite: ChildSuite, mode: str) -> SecurityAssociation:
    return SecurityAssociation(spi=256, protocol=Protocol.ESP if suite.protocol == ProtocolId.ESP else Protocol.AH,
                               mode=Mode(mode), encryption=suite.encryption_name, enc_key=bytes(suite.encr_keymat_len),
                               integrity=suite.integrity_name, auth_key=bytes(suite.integ_key_len),
                               src="192.0.2.1", dst="192.0.2.2")


# ---------------------------------------------------------------- events -> SAD/SPD


@dataclass
class _Installed:
    inbound: SAState
    outbound: SAState
    policies: list[Policy]


class IkeKeying:
    """Installs negotiated CHILD_SAs in the agent's SAD and SPD and removes them again; key-file text."""

    def __init__(self, sad: SAD, spd: SPD, local: str, remote: str, global_ip: str | None = None) -> None:
        self.sad, self.spd, self.local, self.remote = sad, spd, local, remote
        self.global_ip = global_ip  # behind the extensible NAT: what the peer sees and sends to
        self.ike_lines: list[str] = []
        self.installed: dict[int, _Installed] = {}
        self.history: list[SecurityAssociation] = []  # every SA ever installed: captures outlive the SAs

    def apply(self, event: Event) -> bool:
        """Apply one event; True when the key files changed."""
        if isinstance(event, IkeEstablished):
            self.ike_lines.append(ikev2_line(event.spi_i, event.spi_r, event.suite, event.keys))
            return True
        if isinstance(event, ChildEstablished):
            self._install(event.child)
            return True
        if isinstance(event, ChildDeleted):
            self._remove(event.child)
            return True
        return False

    def _install(self, child: ChildSa) -> None:
        inbound, outbound = security_associations(child, self.local, self.remote)
        if self.global_ip is not None:  # the peer sends to the global IP ([nat]: inbound dst is the global IP)
            inbound = dataclasses.replace(inbound, dst=self.global_ip)
        states = self.sad.add_inbound(inbound), self.sad.add_outbound(outbound)
        self.history += [inbound, outbound]
        local_ts, remote_ts = tuple(self._private(ts) for ts in child.local_ts), child.remote_ts
        if child.udp_encap and child.mode == "transport":
            local_ts, remote_ts = _at(local_ts, self.local), _at(remote_ts, self.remote)
        policies = [Policy(selector, Action.PROTECT, states[1], states[0], name=f"ike-{child.inbound_spi:08x}")
                    for selector in selectors(local_ts, remote_ts)]
        self.spd.prepend(policies)  # the newest SA wins: after a rekey, traffic moves at once
        self.installed[child.inbound_spi] = _Installed(states[0], states[1], policies)

    def _private(self, ts: TrafficSelector) -> TrafficSelector:
        """The SPD sees packets before pre-compensation: the global IP in a selector stands for our own, and
        a port range on it for every port of ours, since pre-compensation maps each private port into the
        leased block (claims 6, 12) that the selector names so that the peer can tell clients apart."""
        glob = self.global_ip
        if glob is None or not (ts.start == ts.end == ipaddress.IPv4Address(glob)):
            return ts
        private = ipaddress.IPv4Address(self.local)
        return dataclasses.replace(ts, start=private, end=private, start_port=0, end_port=65535)

    def _remove(self, child: ChildSa) -> None:
        entry = self.installed.pop(child.inbound_spi, None)
        if entry is None:
            return
        for policy in entry.policies:
            self.spd.remove(policy)
        self.sad.remove(entry.inbound)
        self.sad.remove(entry.outbound)

    def ikev2_table(self) -> str:
        return "".join(line + "\n" for line in self.ike_lines)

    def esp_sa(self) -> str:
        """Wireshark's esp_sa for every SA this agent ever had (a capture may hold packets of deleted ones)."""
        return esp_sa_file(self.history)

    def ah_sa(self) -> str:
        """The same for AH (``ah_sa``: Wireshark has no AH key table; scapy and people read it)."""
        return ah_sa_file(self.history)


def _at(selectors: tuple[TrafficSelector, ...], address: str) -> tuple[TrafficSelector, ...]:
    """Transport mode through a NAT (RFC 7296 section 2.23.1): a selector's addresses become the SA endpoint's
    as the IKE packets showed it, protocol and ports kept. The peer's selector names its private address,
    which a NAT hides: traffic to and from it is what arrives from, and goes to, the NAT's address and port.
    Two peers behind one NAT then get the same selector (RFC 3948 section 5.2; see the README)."""
    where = ipaddress.IPv4Address(address)
    return tuple(dict.fromkeys(dataclasses.replace(ts, start=where, end=where) for ts in selectors))


def selectors(local: tuple[TrafficSelector, ...], remote: tuple[TrafficSelector, ...]) -> list[Selector]:
    """SPD selectors covering the negotiated ranges: every (local prefix, remote prefix) pair, from our side."""
    out = []
    for mine in local:
        for theirs in remote:
            protocol = mine.ip_protocol or theirs.ip_protocol or None
            for src in ipaddress.summarize_address_range(mine.start, mine.end):
                for dst in ipaddress.summarize_address_range(theirs.start, theirs.end):
                    out.append(Selector(str(src), str(dst), protocol, (mine.start_port, mine.end_port),
                                        (theirs.start_port, theirs.end_port)))
    return out
