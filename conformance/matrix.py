"""The matrix {AH, ESP} x {transport, tunnel} and the manual-key configs of its agents.

For one cell, :func:`behind_nat` writes the configs of N clients behind the
extensible NAT and of their one NAT-unaware peer: srv1 in transport mode, or
sgw1 in tunnel mode in front of ih1. The peer knows each client only as the
global IP it appears from; when several clients share that IP it tells them
apart the way RFC 4301 allows with manual keys: by SA (each client leases its
own inbound SPI, CL-SPI) and, for the traffic it sends, by destination port
range (the client's leased block of global ports). Nothing in the peer's
config says "NAT". For the control without compensation (one client per
global IP), the peer selects by address only, as it would for any host.

:func:`ike_behind_nat` writes the same cell keyed by IKEv2 instead (the
agents' ``[ike]`` table): each client leases its IKE SPI and its inbound CHILD
SPIs before IKE_SA_INIT (FIG. 8 steps 801-802) and offers its port blocks as
traffic selectors (RFC 7296 2.9), which is how the peer, a plain responder,
tells the clients on one global IP apart. Every cell but :data:`MANUAL_CELLS`
is keyed so; that one keeps manual keys, so that both paths stay tested.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from client_agent.agent_config import INBOUND, OUTBOUND, AgentConfig, NatSettings, PolicyConfig, SAConfig
from client_agent.agent_ike import IkeTable, parse_ike
from client_agent.ipsec.sa import Mode
from client_agent.ipsec.spd import ANY_PORT, Action, Selector
from client_agent.ipsec.suites import Suite, suite
from netwire.ipv4 import IPPROTO_TCP, IPPROTO_UDP
from netwire.plan import GATEWAY_IP, INTRANET_HOST_IP, SGW_OUTSIDE_IP, client_ip, global_ips, server_ip
from netwire.plan import INTRANET_NET as INTRANET

SUITES = {"esp": "esp:AES_GCM_16-128:NONE", "ah": "ah:HMAC_SHA2_256_128"}  # the seed's ESP and AH, modern keys
PORT_BLOCK = 16  # global ports leased ahead per client and transport protocol
FIRST_PORT = 20000  # below Linux's ephemeral range (32768-60999): no local socket of the client uses them
LEASE_LIFETIME_S = 60
MANUAL_CELLS = frozenset({"esp-transport"})  # keyed by hand in the matrix; every other cell by IKEv2
IKE_PROPOSAL = "aes128-sha256-x25519"  # the IKE SA; group 31, the cheapest of the three (natlab bench ike)
IKE_CHILD = {"esp": "aes128gcm16", "ah": "sha256"}  # the CHILD_SAs: SUITES' transforms, as IKE names them
IKE_PSK = "natlab matrix pre-shared key"  # testbed only


@dataclass(frozen=True)
class Cell:
    """One cell of the matrix; TCP and UDP run inside every cell."""

    protocol: str  # "esp" | "ah"
    mode: str  # "transport" | "tunnel"

    @property
    def name(self) -> str:
        return f"{self.protocol}-{self.mode}"

    @property
    def suite(self) -> Suite:
        return suite(SUITES[self.protocol])

    @property
    def peer(self) -> str:
        """The host the clients' SAs end at."""
        return "srv1" if self.mode == "transport" else "sgw1"

    @property
    def peer_ip(self) -> str:
        return server_ip(1) if self.mode == "transport" else SGW_OUTSIDE_IP

    @property
    def keying(self) -> str:
        """How the matrix keys this cell: "manual" ([[sa]] tables) or "ike" ([ike] tables)."""
        return "manual" if self.name in MANUAL_CELLS else "ike"

    @property
    def target(self) -> tuple[str, str]:
        """The host and address the applications talk to: srv1 itself, or ih1 behind sgw1."""
        return ("srv1", server_ip(1)) if self.mode == "transport" else ("ih1", INTRANET_HOST_IP)


CELLS = tuple(Cell(p, m) for p in ("esp", "ah") for m in ("transport", "tunnel"))


@dataclass(frozen=True)
class Client:
    """One client behind the NAT: its private IP, the global IP and port block it leases, its SPIs."""

    name: str
    private_ip: str
    global_ip: str
    ports: tuple[int, int]
    spi_out: int  # the peer's inbound SPI (the peer is not behind a NAT: nothing to lease)
    spi_in: int  # the client's inbound SPI: leased from the NAT (CL-SPI)


def clients(count: int, globals_: int, *, spi_base: int = 0x5000) -> list[Client]:
    """``count`` clients h1..hN spread over ``globals_`` global IPs, with disjoint port blocks and SPIs."""
    pool = global_ips(globals_)
    out = []
    for i in range(count):
        low = FIRST_PORT + i * PORT_BLOCK
        out.append(Client(f"h{i + 1}", client_ip(i + 1), pool[i % len(pool)], (low, low + PORT_BLOCK - 1),
                          spi_base + 2 * i, spi_base + 2 * i + 1))
    return out


def behind_nat(
    cell: Cell, members: list[Client], *, compensate: bool = True, algs: tuple[str, ...] = ("address-text",),
    lifetime: int = LEASE_LIFETIME_S, random: Callable[[int], bytes] = os.urandom, classic: bool = False,
) -> tuple[list[AgentConfig], AgentConfig]:
    """The clients' configs (with ``[nat]``) and the peer's, with fresh keys from ``random``.

    ``classic``: behind a classic NAT there is nothing to lease and nobody
    compensates; the clients are plain IPsec hosts that receive at their
    private address (the NAT translates the destination back), and the peer
    still sees them as the global IP.
    """
    compensate = compensate and not classic
    mode = Mode(cell.mode)
    peer_ip = cell.peer_ip
    peer_prefix = f"{peer_ip}/32" if mode is Mode.TRANSPORT else INTRANET
    configs, peer_sas, peer_policies = [], [], []
    for c in members:
        out_name, in_name = f"{c.name}-{cell.peer}", f"{cell.peer}-{c.name}"
        send = cell.suite.sa(c.spi_out, mode, src=c.private_ip, dst=peer_ip, random=random)
        receive = cell.suite.sa(c.spi_in, mode, src=peer_ip, dst=c.global_ip, random=random)
        nat: NatSettings | None = NatSettings(global_ip=c.global_ip, ports={IPPROTO_TCP: c.ports, IPPROTO_UDP: c.ports},
                          server=GATEWAY_IP, lifetime=lifetime, compensate=compensate, algs=algs)
        if classic:
            nat, receive = None, replace(receive, dst=c.private_ip)
        configs.append(AgentConfig(
            name=c.name, routes=(peer_prefix,), address=c.private_ip, nat=nat,
            sas=(SAConfig(out_name, OUTBOUND, send), SAConfig(in_name, INBOUND, receive)),
            policies=(PolicyConfig(out_name, Selector(f"{c.private_ip}/32", peer_prefix), Action.PROTECT,
                                   out_name, in_name),),
        ))
        # The peer's view: the client is its global IP and its port block.
        peer_sas += [SAConfig(in_name, OUTBOUND, replace(receive, dst=c.global_ip)),
                     SAConfig(out_name, INBOUND, replace(send, src=c.global_ip))]
        # Without compensation (the control) the client's private ports reach the peer: select by address only.
        ports = c.ports if compensate else ANY_PORT
        peer_policies.append(PolicyConfig(in_name, Selector(peer_prefix, f"{c.global_ip}/32", dst_ports=ports),
                                          Action.PROTECT, in_name, out_name))
    routes = tuple(sorted({f"{c.global_ip}/32" for c in members}))
    address = peer_ip if mode is Mode.TRANSPORT else None
    peer = AgentConfig(name=cell.peer, routes=routes, address=address, sas=tuple(peer_sas),
                       policies=tuple(peer_policies))
    return configs, peer



def ike_behind_nat(cell: Cell, members: list[Client], *, algs: tuple[str, ...] = ("address-text",),
                   lifetime: int = LEASE_LIFETIME_S) -> tuple[list[AgentConfig], AgentConfig]:
    """The clients' configs (``[ike]`` initiators with ``[nat]``) and the peer's (a responder knowing no NAT).

    Each client offers TSi = its global IP with its leased TCP and UDP port
    blocks (what the peer sees after pre-compensation); the responder allows
    the clients' global IPs, so its SPD picks each client's SA by port, as
    the manual peer config does. The clients' SPIs are leased, not chosen here.
    """
    peer_prefix = f"{cell.peer_ip}/32" if cell.mode == "transport" else INTRANET
    configs = []
    for c in members:
        nat = NatSettings(global_ip=c.global_ip, ports={IPPROTO_TCP: c.ports, IPPROTO_UDP: c.ports},
                          server=GATEWAY_IP, lifetime=lifetime, algs=algs)
        blocks = [f"{c.global_ip}/32[{name}/{c.ports[0]}-{c.ports[1]}]" for name in ("tcp", "udp")]
        ike = _ike_table(cell, role="initiator", peer=cell.peer_ip, local_id=f"{c.name}.natlab",
                         remote_id=f"{cell.peer}.natlab", local_ts=blocks, remote_ts=[peer_prefix])
        configs.append(AgentConfig(name=c.name, routes=(peer_prefix,), address=c.private_ip, nat=nat, sas=(),
                                   policies=(), ike=ike))
    globals_ = sorted({f"{c.global_ip}/32" for c in members})
    ike = _ike_table(cell, role="responder", local_id=f"{cell.peer}.natlab", local_ts=[peer_prefix],
                     remote_ts=globals_)
    # [ike] needs the address IKE and the SAs use: in tunnel mode too (the tunnel's outer source).
    peer = AgentConfig(name=cell.peer, routes=tuple(globals_), address=cell.peer_ip, sas=(), policies=(), ike=ike)
    return configs, peer


def _ike_table(cell: Cell, **fields: object) -> IkeTable:
    """An ``[ike]`` table for ``cell``, validated as a config file's would be."""
    return parse_ike({"psk": IKE_PSK, "proposals": [IKE_PROPOSAL], cell.protocol: [IKE_CHILD[cell.protocol]],
                      "mode": cell.mode, **{k: v for k, v in fields.items() if v is not None}})
