"""The agent's configuration file (TOML: manual keys in [[sa]] tables, or [ike] for IKEv2), parsed and validated; pure.

One file describes one agent: its TUN device and the prefixes routed into it
(``[agent]``), its SAs (``[[sa]]``, RFC 4301 section 4.4.2.1 fields with keys
in hex), and its SPD (``[[policy]]``, section 4.4.1, first match wins)::

    [agent]
    name = "h1"                      # for logs; the default run directory is /run/natlab/agent-NAME
    routes = ["203.0.113.100/32"]    # protected prefixes: routed into the TUN device
    address = "10.0.0.1"             # optional: source address of local traffic into the TUN
    # optional: tun = "ipsec0", link_mtu = 1500, mtu (default link_mtu - the largest SA overhead; more means
    #           the agent fragments ESP/AH after protection), default = "discard" | "bypass",
    #           mark = 1, table = 100, rule_priority = 100, run_dir = "/run/natlab/agent-h1",
    #           verify_icv = true (false is a fault for the conformance control CTRL-NOVERIFY only),
    #           coalesce = false (true: inbound TCP reaches the TUN as super-segments, IFF_VNET_HDR),
    #           txqueuelen = 500 (packets the kernel queues for the agent to read from the TUN)

    [[sa]]
    name = "h1-srv1"
    direction = "outbound"           # or "inbound"
    spi = 0x1001
    protocol = "esp"                 # or "ah"
    mode = "transport"               # or "tunnel" (then src and dst are the tunnel endpoints)
    encryption = "ENCR_AES_GCM_16"   # IANA names (client_agent.ipsec.algorithms); AH takes none
    enc_key = "00112233..."          # hex; AES-GCM: key + 4-byte salt (RFC 4106 section 8.1)
    integrity = "NONE"               # e.g. AUTH_HMAC_SHA1_96, AUTH_HMAC_SHA2_256_128
    auth_key = ""
    src = "10.0.0.1"
    dst = "203.0.113.100"

    [[policy]]
    name = "h1-srv1"
    src = "10.0.0.1/32"              # from this host's side, outbound; inbound is matched mirrored
    dst = "203.0.113.100/32"
    protocol = "any"                 # or tcp, udp, icmp, a number; optional src_ports/dst_ports = [low, high]
    action = "protect"               # or bypass, discard
    outbound = "h1-srv1"             # SA names
    inbound = "srv1-h1"

Behind the extensible NAT, an optional ``[nat]`` table turns on module 109
(seed FIG. 8-10): what the agent leases before any traffic and how it
compensates (:mod:`client_agent.traversal`)::

    [nat]
    global_ip = "203.0.113.1"        # the global IP to lease; the peers' configs send to it
    tcp_ports = [20000, 20015]       # global ports leased ahead (PCP PEER), bound to connections on first use;
    udp_ports = [20000, 20015]       #   the peers select this client's SA by this destination port range
    # server = "..."                 # optional: the lease server (default: the gateway, netwire.plan.GATEWAY_IP)
    lifetime = 120                   # optional: requested lease lifetime, s (renewed at 1/2-5/8, RFC 6887 11.2.1)
    lease_timeout = 10               # optional: how long startup waits for every lease, s
    compensate = true                # optional: false is the control (leases, but no compensation)
    algs = ["address-text", "ftp"]   # optional: client ALGs to run (client_agent.alg, client_agent.ftp_alg)

Every port of a block is one PEER lease per peer: the NAT's default quota is
64 leases per client (16 TCP + 16 UDP ports to one peer, plus the SPIs, fit).
With ``[nat]``, the inbound SAs' SPIs are leased (CL-SPI), so their ``dst``
is the global IP (what the peer sends to) or absent, and ``[agent] address``
(the private IP) is required.

A mistake raises :class:`ConfigError` naming the file, the table, the field
and the value. :func:`databases` turns a config into the SAD and SPD the
datapath uses; :func:`render` writes a config back as TOML, and
:func:`peer_pair` makes the two mirrored configs of a pair of peers with fresh
keys (for tests and benchmarks).
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import os
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from client_agent.agent_ike import IkeConfigError, IkeTable, parse_ike
from client_agent.ipsec.sa import Mode, Protocol, SAState, SecurityAssociation
from client_agent.ipsec.sad import SAD
from client_agent.ipsec.spd import ANY_PORT, SPD, Action, Policy, Selector
from client_agent.ipsec.suites import Suite
from netwire.ipv4 import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from netwire.plan import GATEWAY_IP

INBOUND, OUTBOUND = "inbound", "outbound"
LINK_MTU = 1500  # Ethernet, as on every testbed link
TXQUEUELEN = 500  # Linux's default queue of a TUN device (tun.c)
IFNAMSIZ = 16
RESERVED_TABLES = {0, 253, 254, 255}  # unspec, default, main, local
PROTOCOL_NAMES = {"any": None, "icmp": IPPROTO_ICMP, "tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}

_AGENT_FIELDS = {
    "name", "tun", "address", "routes", "mtu", "link_mtu", "default", "mark", "table", "rule_priority", "run_dir",
    "verify_icv", "coalesce", "txqueuelen",
}
_SA_FIELDS = {
    "name", "direction", "spi", "protocol", "mode", "encryption", "enc_key", "integrity", "auth_key", "src", "dst",
    "replay_window",
}
_NAT_FIELDS = {"global_ip", "tcp_ports", "udp_ports", "server", "lifetime", "lease_timeout", "compensate", "algs"}
DEFAULT_LEASE_SERVER = GATEWAY_IP  # the testbed's gateway
KNOWN_ALGS = ("address-text", "ftp")
_POLICY_FIELDS = {"name", "src", "dst", "protocol", "src_ports", "dst_ports", "action", "outbound", "inbound"}


class ConfigError(ValueError):
    """A configuration mistake; the message names the file, the table, the field and the value."""


@dataclass(frozen=True)
class SAConfig:
    """One ``[[sa]]``: an SA and the direction it is installed in."""

    name: str
    direction: str
    sa: SecurityAssociation


@dataclass(frozen=True)
class PolicyConfig:
    """One ``[[policy]]``: a selector, an action and, for PROTECT, the names of its SAs."""

    name: str
    selector: Selector
    action: Action
    outbound: str | None = None
    inbound: str | None = None


@dataclass(frozen=True)
class NatSettings:
    """``[nat]``: the client is behind the extensible NAT (module 109)."""

    global_ip: str
    ports: dict[int, tuple[int, int]]  # IPPROTO_TCP / IPPROTO_UDP -> leased block (low, high)
    server: str = DEFAULT_LEASE_SERVER
    lifetime: int = 120
    lease_timeout: float = 10.0
    compensate: bool = True
    algs: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentConfig:
    """A whole, validated agent configuration."""

    name: str
    routes: tuple[str, ...]
    sas: tuple[SAConfig, ...]
    policies: tuple[PolicyConfig, ...]
    tun: str = "ipsec0"
    address: str | None = None
    mtu: int | None = None
    link_mtu: int = LINK_MTU
    default: Action = Action.DISCARD
    mark: int = 1
    table: int = 100
    rule_priority: int = 100
    run_dir: str | None = None
    nat: NatSettings | None = None
    verify_icv: bool = True  # a fault switch for the conformance controls only: false accepts any AH ICV
    coalesce: bool = False  # inbound TCP written to the TUN as super-segments (IFF_VNET_HDR; client_agent.coalesce)
    txqueuelen: int = TXQUEUELEN  # the TUN's queue toward the agent; beyond it the kernel drops (TCP retransmits)
    ike: IkeTable | None = None  # keys by IKEv2 ([ike], client_agent.agent_ike) instead of [[sa]]

    def behind_nat(self) -> tuple[NatSettings, str]:
        """The ``[nat]`` settings and the private address they lease for (load() requires both together)."""
        if self.nat is None or self.address is None:
            raise ConfigError(f"agent {self.name}: no [nat] table with an [agent] address")
        return self.nat, self.address

    @property
    def run_directory(self) -> Path:
        """Where the key file (``esp_sa``) and ``status.json`` go."""
        return Path(self.run_dir or f"/run/natlab/agent-{self.name}")

    def tun_mtu(self) -> int:
        """The configured MTU, or the link MTU less the largest outbound overhead, so that nothing is fragmented.

        A larger ``mtu`` trades fragments on the wire (the agent fragments
        after protection, RFC 4303 section 3.3.4) for fewer, larger packets
        through the agent: less per-packet work, the same crypto work.
        """
        if self.mtu is not None:
            return self.mtu
        overheads = [overhead(s.sa) for s in self.sas if s.direction == OUTBOUND]
        if self.ike is not None:
            overheads.append(self.ike.largest_overhead(overhead))
        return self.link_mtu - max(overheads, default=0)


def overhead(sa: SecurityAssociation) -> int:
    """The most bytes protecting one packet under ``sa`` can add (outer header, ESP/AH header, IV, padding, ICV).

    ESP: header 8 + IV + up to ``pad_to - 1`` padding + 2 trailer + ICVs (RFC 4303 section 2);
    AH: 12 + ICV padded to 32 bits (RFC 4302 section 2); tunnel mode adds a 20-byte IPv4 header.
    """
    integrity_icv = sa.integrity_algorithm.icv_len
    outer = 20 if sa.mode is Mode.TUNNEL else 0
    if sa.protocol is Protocol.AH:
        return outer + 12 + -(-integrity_icv // 4) * 4
    cipher = sa.encryption_algorithm.new  # the cipher class: its sizes are class attributes
    return outer + 8 + cipher.iv_len + cipher.pad_to - 1 + 2 + cipher.icv_len + integrity_icv


def examples() -> Path:
    """The folder of example configs, shipped as package data: found the same way in a checkout and in
    an installed natlab (``pip install .``), so nothing needs the source tree."""
    return Path(str(importlib.resources.files("client_agent") / "examples"))


def load(path: str | Path) -> AgentConfig:
    """Read and validate the configuration file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    return parse(text, source=str(path))


def parse(text: str, *, source: str = "<config>") -> AgentConfig:
    """Validate the TOML ``text``; ``source`` prefixes every error message."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from None
    try:
        return from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def from_dict(data: dict[str, Any]) -> AgentConfig:
    """Validate an already-parsed configuration."""
    _only(data, {"agent", "sa", "policy", "nat", "ike"}, "top level")
    agent = data.get("agent")
    if not isinstance(agent, dict):
        raise ConfigError("[agent]: missing (it names the agent and its routes)")
    _only(agent, _AGENT_FIELDS, "[agent]")
    sas = tuple(_sa(i, table) for i, table in enumerate(_tables(data, "sa")))
    _unique((s.name for s in sas), "sa")
    by_name = {s.name: s for s in sas}
    policies = tuple(_policy(i, table, by_name) for i, table in enumerate(_tables(data, "policy")))
    _unique((p.name for p in policies), "policy")
    where = "[agent]"
    nat = _nat(data["nat"], agent, sas) if "nat" in data else None
    ike = _ike(data["ike"], sas, nat, agent) if "ike" in data else None
    return AgentConfig(
        name=_str(agent, "name", where),
        routes=tuple(_prefix(route, f"{where} routes") for route in _list(agent, "routes", where, default=[])),
        sas=sas,
        policies=policies,
        tun=_interface(agent.get("tun", "ipsec0"), where),
        address=_address(agent["address"], f"{where} address") if "address" in agent else None,
        mtu=_int(agent, "mtu", where, 576, 65535, default=None),
        link_mtu=_int(agent, "link_mtu", where, 576, 65535, default=LINK_MTU),
        default=_choice(agent, "default", where, {"discard": Action.DISCARD, "bypass": Action.BYPASS}, "discard"),
        mark=_int(agent, "mark", where, 1, 2**32 - 1, default=1),
        table=_table(agent, where),
        rule_priority=_int(agent, "rule_priority", where, 1, 32765, default=100),
        run_dir=_str(agent, "run_dir", where) if "run_dir" in agent else None,
        nat=nat,
        verify_icv=_flag(agent, "verify_icv", where),
        coalesce=_flag(agent, "coalesce", where, default=False),
        txqueuelen=_int(agent, "txqueuelen", where, 1, 1_000_000, default=TXQUEUELEN),
        ike=ike,
    )


def _ike(table: object, sas: tuple[SAConfig, ...], nat: NatSettings | None, agent: dict[str, Any]) -> IkeTable:
    """``[ike]`` (client_agent.agent_ike): keys negotiated by IKEv2 instead of ``[[sa]]`` tables."""
    if "address" not in agent:
        raise ConfigError("[ike]: needs [agent] address, the address IKE and the SAs use")
    if sas:
        raise ConfigError("[ike]: an agent keyed by IKE takes no [[sa]] tables (manual keys are another config)")
    try:
        ike = parse_ike(table)
    except IkeConfigError as err:
        raise ConfigError(str(err)) from None
    if nat is not None and ike.role != "initiator":
        raise ConfigError("[ike] role: behind the NAT ([nat]) the client initiates (FIG. 8 step 801)")
    return ike


def _flag(table: dict[str, Any], key: str, where: str, default: bool = True) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where} {key}={value!r}: must be true or false")
    return value


def _nat(table: object, agent: dict[str, Any], sas: tuple[SAConfig, ...]) -> NatSettings:
    where = "[nat]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    _only(table, _NAT_FIELDS, where)
    if "address" not in agent:
        raise ConfigError(f"{where}: needs [agent] address, the private IP the NAT leases for")
    global_ip = _address(table.get("global_ip"), f"{where} global_ip")
    ports = _nat_ports(table, where)
    _check_nat_sas(sas, global_ip, where)
    algs = _list(table, "algs", where, default=[])
    for name in algs:
        if name not in KNOWN_ALGS:
            raise ConfigError(f"{where} algs: {name!r} is not a client ALG (known: {', '.join(KNOWN_ALGS)})")
    compensate = table.get("compensate", True)
    if not isinstance(compensate, bool):
        raise ConfigError(f"{where} compensate={compensate!r}: must be true or false")
    return NatSettings(
        global_ip=global_ip, ports=ports,
        server=_address(table.get("server", DEFAULT_LEASE_SERVER), f"{where} server"),
        lifetime=_int(table, "lifetime", where, 1, 86400, default=120),
        lease_timeout=_int(table, "lease_timeout", where, 1, 3600, default=10),
        compensate=compensate, algs=tuple(algs),
    )


def _nat_ports(table: dict, where: str) -> dict[int, tuple[int, int]]:
    """The blocks of global ports leased ahead, by IP protocol: at most 256 each (the peers' selectors)."""
    ports = {}
    for key, proto in (("tcp_ports", IPPROTO_TCP), ("udp_ports", IPPROTO_UDP)):
        if key in table:
            low, high = _ports(table, key, where)
            if not 1 <= low <= high <= 65535 or high - low >= 256:
                raise ConfigError(f"{where} {key}={table[key]!r}: a block of 1..256 ports within 1..65535")
            ports[proto] = (low, high)
    return ports


def _check_nat_sas(sas: tuple[SAConfig, ...], global_ip: str, where: str) -> None:
    """Behind the NAT, inbound SAs are addressed to the global IP (CL-SPI) and outbound ones name their peer."""
    for entry in sas:
        if entry.direction == INBOUND and entry.sa.dst not in (None, global_ip):
            raise ConfigError(f"{where}: sa {entry.name!r} dst={entry.sa.dst!r}: behind the NAT the peer sends to "
                              f"the global IP {global_ip} (or leave dst out)")
        if entry.direction == OUTBOUND and entry.sa.dst is None:
            raise ConfigError(f"{where}: sa {entry.name!r} needs dst: the leases name the foreign host")


def databases(config: AgentConfig) -> tuple[SAD, SPD]:
    """The SAD and SPD of ``config``: every SA installed, every policy pointing at its SAs' running state."""
    sad = SAD()
    states = {}
    for entry in config.sas:
        add = sad.add_outbound if entry.direction == OUTBOUND else sad.add_inbound
        try:
            states[entry.name] = add(entry.sa)
        except ValueError as err:
            raise ConfigError(f"sa {entry.name!r}: {err}") from None
    policies = [
        Policy(p.selector, p.action, _state(states, p.outbound), _state(states, p.inbound), name=p.name)
        for p in config.policies
    ]
    return sad, SPD(policies, default=config.default)


def _tables(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    tables = data.get(key, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{key}: must be an array of tables, [[{key}]]")
    return tables


def _sa(index: int, table: dict[str, Any]) -> SAConfig:
    where = _label("sa", index, table)
    _only(table, _SA_FIELDS, where)
    name = _str(table, "name", where)
    direction = _choice(table, "direction", where, {INBOUND: INBOUND, OUTBOUND: OUTBOUND}, None)
    for required in ("spi", "protocol"):
        if required not in table:
            raise ConfigError(f"{where}: {required} is missing")
    fields = {k: v for k, v in table.items() if k not in {"name", "direction"}}
    for key_field in ("enc_key", "auth_key"):
        if key_field in fields:
            fields[key_field] = _hex(fields[key_field], f"{where} {key_field}")
    try:
        sa = SecurityAssociation(**fields)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    return SAConfig(name, direction, sa)


def _policy(index: int, table: dict[str, Any], sas: dict[str, SAConfig]) -> PolicyConfig:
    where = _label("policy", index, table)
    _only(table, _POLICY_FIELDS, where)
    name = _str(table, "name", where)
    action = _choice(table, "action", where, {a.value: a for a in Action}, None)
    try:
        selector = Selector(
            src=table.get("src", "0.0.0.0/0"), dst=table.get("dst", "0.0.0.0/0"),
            protocol=_protocol(table.get("protocol", "any"), where),
            src_ports=_ports(table, "src_ports", where), dst_ports=_ports(table, "dst_ports", where),
        )
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    refs = {}
    for direction in (OUTBOUND, INBOUND):
        ref = table.get(direction)
        if ref is None:
            continue
        if action is not Action.PROTECT:
            raise ConfigError(f"{where}: {direction}={ref!r}: action={action} takes no SA")
        if ref not in sas:
            raise ConfigError(f"{where}: {direction}={ref!r}: no [[sa]] has that name")
        if sas[ref].direction != direction:
            raise ConfigError(f"{where}: {direction}={ref!r}: that SA is installed {sas[ref].direction}")
        refs[direction] = ref
    if action is Action.PROTECT and not refs:
        raise ConfigError(f"{where}: action=protect needs an outbound or inbound SA name")
    return PolicyConfig(name, selector, action, refs.get(OUTBOUND), refs.get(INBOUND))


def _label(kind: str, index: int, table: dict[str, Any]) -> str:
    """How errors name the ``index``-th table of ``kind``: ``sa[0] 'h1-srv1'``."""
    name = table.get("name")
    return f"{kind}[{index}] {name!r}" if isinstance(name, str) and name else f"{kind}[{index}]"


def _only(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed))})")


def _unique(names: Iterable[str], kind: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{kind} name={name!r}: used twice")
        seen.add(name)


def _str(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} {key}={value!r}: must be a non-empty string")
    return value


def _state(states: dict[str, SAState], name: str | None) -> SAState | None:
    return None if name is None else states.get(name)


def _list(table: dict[str, Any], key: str, where: str, default: list[Any]) -> list[Any]:
    value = table.get(key, default)
    if not isinstance(value, list):
        raise ConfigError(f"{where} {key}={value!r}: must be a list")
    return value


@overload
def _int(table: dict[str, Any], key: str, where: str, low: int, high: int, default: int) -> int: ...
@overload
def _int(table: dict[str, Any], key: str, where: str, low: int, high: int, default: None) -> int | None: ...
def _int(table: dict[str, Any], key: str, where: str, low: int, high: int, default: int | None) -> int | None:
    value = table.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where} {key}={value!r}: must be a whole number in {low}..{high}")
    return value


def _table(agent: dict[str, Any], where: str) -> int:
    table = _int(agent, "table", where, 1, 2**32 - 1, default=100)
    if table in RESERVED_TABLES:
        raise ConfigError(f"{where} table={table}: reserved (0 unspec, 253 default, 254 main, 255 local)")
    return table


def _choice(table: dict[str, Any], key: str, where: str, choices: dict[str, Any], default: str | None) -> Any:
    value = table.get(key, default)
    if not isinstance(value, str) or value.lower() not in choices:
        raise ConfigError(f"{where} {key}={value!r}: must be one of {', '.join(choices)}")
    return choices[value.lower()]


def _hex(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(f"{where}={value!r}: must be a string of hex digits")
    digits = value.strip().removeprefix("0x").replace(":", "").replace(" ", "")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise ConfigError(f"{where}={value!r}: not hexadecimal") from None


def _address(value: object, where: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        raise ConfigError(f"{where}={value!r}: not an IPv4 address") from None


def _prefix(value: object, where: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {value!r}: not an IPv4 prefix ({err})") from None


def _interface(value: object, where: str) -> str:
    if not isinstance(value, str) or not 0 < len(value.encode()) < IFNAMSIZ or "/" in value or " " in value:
        raise ConfigError(f"{where} tun={value!r}: an interface name of 1..{IFNAMSIZ - 1} characters")
    return value


def _protocol(value: object, where: str) -> int | None:
    if isinstance(value, str) and value.lower() in PROTOCOL_NAMES:
        return PROTOCOL_NAMES[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    raise ConfigError(f"{where} protocol={value!r}: must be {', '.join(PROTOCOL_NAMES)} or 0..255")


def _ports(table: dict[str, Any], key: str, where: str) -> tuple[int, int]:
    value = table.get(key, list(ANY_PORT))
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(p, int) for p in value)):
        raise ConfigError(f"{where} {key}={value!r}: must be a port or [low, high]")
    return (value[0], value[1])


# Writing configs: for tests and benchmarks that make agents on the fly.


@dataclass(frozen=True)
class Peer:
    """One side of a pair: its address (the SA endpoint) and the prefix of the traffic it protects.

    ``protected`` defaults to the address itself (transport mode, or a tunnel
    from a single host); a gateway names the network behind it.
    """

    name: str
    address: str
    protected: str | None = None

    @property
    def prefix(self) -> str:
        return self.protected or f"{self.address}/32"


def peer_pair(
    suite: Suite, left: Peer, right: Peer, *, mode: Mode | str = Mode.TRANSPORT, spis: tuple[int, int] = (0x1001, 0x1002),
    random: Callable[[int], bytes] = os.urandom, **agent: Any,
) -> tuple[AgentConfig, AgentConfig]:
    """Two mirrored configs: ``left`` sends under SPI ``spis[0]`` and receives under ``spis[1]``.

    Each side routes the other's prefix into its TUN and protects everything
    between the two prefixes with fresh keys from ``random``. ``agent`` adds
    ``[agent]`` fields (e.g. ``run_dir`` is set per side by the caller later).
    """
    mode = Mode(mode)
    forward = suite.sa(spis[0], mode, src=left.address, dst=right.address, random=random)
    backward = suite.sa(spis[1], mode, src=right.address, dst=left.address, random=random)

    def side(me: Peer, other: Peer, send: SecurityAssociation, receive: SecurityAssociation) -> AgentConfig:
        out_name, in_name = f"{me.name}-{other.name}", f"{other.name}-{me.name}"
        local = me.address if ipaddress.IPv4Address(me.address) in ipaddress.IPv4Network(me.prefix) else None
        return AgentConfig(
            name=me.name, routes=(other.prefix,), address=local,
            sas=(SAConfig(out_name, OUTBOUND, send), SAConfig(in_name, INBOUND, receive)),
            policies=(PolicyConfig(out_name, Selector(me.prefix, other.prefix), Action.PROTECT, out_name, in_name),),
            **agent,
        )

    return side(left, right, forward, backward), side(right, left, backward, forward)


def render(config: AgentConfig) -> str:
    """``config`` as a TOML file that :func:`parse` reads back to an equal config."""
    agent: dict[str, Any] = {"name": config.name, "tun": config.tun, "routes": list(config.routes)}
    optional = {"address": config.address, "mtu": config.mtu, "run_dir": config.run_dir}
    agent |= {k: v for k, v in optional.items() if v is not None}
    agent |= {"link_mtu": config.link_mtu, "default": str(config.default), "mark": config.mark, "table": config.table,
              "rule_priority": config.rule_priority}
    agent |= {} if config.verify_icv else {"verify_icv": False}
    agent |= {"coalesce": True} if config.coalesce else {}
    agent |= {} if config.txqueuelen == TXQUEUELEN else {"txqueuelen": config.txqueuelen}
    lines = ["[agent]", *_assignments(agent)]
    for entry in config.sas:
        sa = entry.sa
        fields = {
            "name": entry.name, "direction": entry.direction, "spi": sa.spi, "protocol": sa.protocol.name.lower(),
            "mode": str(sa.mode), "encryption": sa.encryption, "enc_key": sa.enc_key.hex(),
            "integrity": sa.integrity, "auth_key": sa.auth_key.hex(), "replay_window": sa.replay_window,
        }
        fields |= {k: v for k, v in (("src", sa.src), ("dst", sa.dst)) if v is not None}
        lines += ["", "[[sa]]", *_assignments(fields)]
    for policy in config.policies:
        selector = policy.selector
        fields = {
            "name": policy.name, "src": selector.src, "dst": selector.dst,
            "protocol": "any" if selector.protocol is None else selector.protocol,
            "src_ports": list(selector.src_ports), "dst_ports": list(selector.dst_ports), "action": str(policy.action),
        }
        fields |= {k: v for k, v in (("outbound", policy.outbound), ("inbound", policy.inbound)) if v is not None}
        lines += ["", "[[policy]]", *_assignments(fields)]
    if config.nat is not None:
        nat = config.nat
        fields = {"global_ip": nat.global_ip, "server": nat.server, "lifetime": nat.lifetime,
                  "lease_timeout": int(nat.lease_timeout), "compensate": nat.compensate, "algs": list(nat.algs)}
        names = {IPPROTO_TCP: "tcp_ports", IPPROTO_UDP: "udp_ports"}
        fields |= {names[proto]: list(block) for proto, block in sorted(nat.ports.items())}
        lines += ["", "[nat]", *_assignments(fields)]
    if config.ike is not None:
        lines += ["", "[ike]", *_assignments(config.ike.toml_fields())]
    return "\n".join(lines) + "\n"


def _assignments(fields: dict[str, Any]) -> list[str]:
    return [f"{key} = {_toml_value(key, value)}" for key, value in fields.items()]


def _toml_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"0x{value:08x}" if key == "spi" else str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if any(c in value for c in '"\\\n') or not value.isprintable():
            raise ValueError(f"{key}={value!r}: cannot be written as a plain TOML string")
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(key, v) for v in value) + "]"
    raise TypeError(f"{key}={value!r}: no TOML form")
