"""Module 109 per packet: a client behind the extensible NAT, between its applications and IPsec.

The agent's IPsec processing (RFC 4301 section 5) calls :meth:`Traversal.before_protect`
between the SPD lookup and ESP/AH (seed FIG. 9), and :meth:`Traversal.after_unprotect`
between ESP/AH and the SPD check of the inner packet (FIG. 10):

- outgoing: the source port becomes a global port of the leased block
  (810), in tunnel mode the inner source IP becomes the global IP (811), the
  TCP/UDP checksum gets the differences (812), the client ALGs run (813), and
  AH is computed as if the source IP were the global IP (815:
  :attr:`Traversal.icv_src`);
- incoming: AH is verified as if the destination IP were the global IP (820:
  :attr:`Traversal.icv_dst`), the ALGs run (822), the destination port and, in
  tunnel mode, address go back to the private ones (824-825), with the
  checksum differences subtracted (826).

Global ports are leased ahead as a block per transport protocol (FIG. 8
steps 803-805) and bound to private ports on a connection's first outgoing
packet, so no packet waits for a lease round trip, and a NAT-unaware peer with
manual keys can select the SA of each client behind one global IP by
destination port range (RFC 4301 section 4.4.1.1 selectors): the block is that
range. A binding idle for :data:`IDLE_TIMEOUT_S` is reclaimed when the block
runs out.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from client_agent.alg import AlgRegistry
from client_agent.compensate import Binding, NotCompensable, compensate
from client_agent.ipsec.errors import DropReason, IPsecError
from client_agent.ipsec.sa import SAState
from netwire.ethernet import MalformedPacket
from netwire.ipv4 import IPPROTO_TCP, IPPROTO_UDP
from netwire.view import PROTOCOL_OFFSET, IPv4View, Packet

__pure__ = True

IDLE_TIMEOUT_S = 300.0  # longer than TCP's TIME-WAIT (2 MSL, RFC 9293 section 3.6.1): a reused port meets no old state
PORTED = (IPPROTO_TCP, IPPROTO_UDP)


class NoGlobalPort(IPsecError):
    """Every global port of the block is bound to a connection that is still active."""

    reason = DropReason.NO_GLOBAL_PORT


class NoBinding(IPsecError):
    """An incoming packet for a global port no connection of ours is bound to."""

    reason = DropReason.NO_BINDING


class Uncompensable(IPsecError):
    """A packet compensation cannot handle (a fragment, a truncated header, not our address)."""

    reason = DropReason.NOT_COMPENSABLE


def _ports(ports: tuple[int, int] | None) -> tuple[int, int]:
    """The ports of a packet of a leased block's protocol: Traversal._parse refuses such a packet without them."""
    if ports is None:
        raise Uncompensable("a packet of a ported protocol without its ports")
    return ports


def _port(port: int | None) -> int:
    """A port of a block's binding: PortBlock makes them with both ports, never None."""
    if port is None:
        raise NotCompensable("a port block's binding without its port")
    return port


class PortBlock:
    """The global ports ``low..high`` of one transport protocol, bound to private ports on first use."""

    def __init__(self, private_ip: str, global_ip: str, low: int, high: int,
                 idle_timeout: float = IDLE_TIMEOUT_S) -> None:
        if not 0 < low <= high <= 0xFFFF:
            raise ValueError(f"port block {low}..{high}: must be a range within 1..65535")
        self.private_ip, self.global_ip = private_ip, global_ip
        self.low, self.high = low, high
        self.idle_timeout = idle_timeout
        self._free = list(range(high, low - 1, -1))  # pop() hands out the lowest first
        self._by_private: dict[int, Binding] = {}
        self._by_global: dict[int, Binding] = {}
        self._last_used: dict[int, float] = {}  # global port -> time of its last packet
        self.reclaimed = 0

    def __len__(self) -> int:
        return self.high - self.low + 1

    def bind(self, private_port: int, now: float) -> Binding:
        """The binding of ``private_port``, made now if it has none (steps 803-805, 810)."""
        binding = self._by_private.get(private_port)
        if binding is None:
            binding = self._new(private_port, now)
        self._last_used[_port(binding.global_port)] = now
        return binding

    def expect(self, private_port: int, now: float, timeout: float) -> Binding:
        """The binding of ``private_port`` for a connection the far end will open (an FTP ALG's PORT/EPRT).

        If nothing comes, it is reclaimable ``timeout`` after now instead of
        after the idle timeout: the block is small and such offers often go
        unanswered (a failed transfer, a client that gave up).
        """
        binding = self._by_private.get(private_port) or self._new(private_port, now)
        at = _port(binding.global_port)
        self._last_used[at] = max(self._last_used.get(at, now - self.idle_timeout), now - self.idle_timeout + timeout)
        return binding

    def lookup(self, global_port: int, now: float) -> Binding | None:
        """The binding an incoming packet for ``global_port`` belongs to (step 824), if any."""
        binding = self._by_global.get(global_port)
        if binding is not None:
            self._last_used[global_port] = now
        return binding

    def bindings(self) -> list[Binding]:
        return sorted(self._by_global.values(), key=lambda b: _port(b.global_port))

    def _new(self, private_port: int, now: float) -> Binding:
        if not self._free:
            self._reclaim(now)
        global_port = self._free.pop()
        binding = Binding(self.private_ip, self.global_ip, private_port, global_port)
        self._by_private[private_port] = self._by_global[global_port] = binding
        return binding

    def _reclaim(self, now: float) -> None:
        global_port = min(self._last_used, key=self._last_used.__getitem__)
        if now - self._last_used[global_port] < self.idle_timeout:
            raise NoGlobalPort(f"all {len(self)} global ports {self.low}..{self.high} are in use")
        old = self._by_global.pop(global_port)
        del self._by_private[_port(old.private_port)], self._last_used[global_port]
        self._free.append(global_port)
        self.reclaimed += 1


class Traversal:
    """What a client behind the extensible NAT does to each packet it protects or unprotects.

    ``ports`` maps IPPROTO_TCP/IPPROTO_UDP to the leased block (low, high).
    ``compensate=False`` is the control of CLAIMS.md: the agent still leases
    (so the NAT forwards its ESP/AH) but behaves as if it knew nothing of the
    NAT, and the seed predicts what fails.
    """

    def __init__(self, private_ip: str, global_ip: str, ports: Mapping[int, tuple[int, int]], *,
                 algs: AlgRegistry | None = None, compensate: bool = True,
                 clock: Callable[[], float] = time.monotonic, idle_timeout: float = IDLE_TIMEOUT_S) -> None:
        self.private_ip, self.global_ip = private_ip, global_ip
        self.blocks = {proto: PortBlock(private_ip, global_ip, low, high, idle_timeout)
                       for proto, (low, high) in ports.items()}
        self.algs = algs if algs is not None else AlgRegistry()
        self.compensate = compensate
        self.clock = clock
        self._address_only = Binding(private_ip, global_ip)
        # 815 / 820: the addresses AH is computed over (None: the packet's own)
        self.icv_src = global_ip if compensate else None
        self.icv_dst = global_ip if compensate else None
        self.compensated_out = self.compensated_in = 0  # plain ints: a Counter costs a lookup per packet

    def before_protect(self, packet: Packet, state: SAState) -> Packet:
        """Steps 810-813 on a packet the SPD chose to protect under ``state``."""
        if not self.compensate:
            return packet
        view, block, ports = self._parse(packet)
        binding = self._address_only if block is None else block.bind(_ports(ports)[0], self.clock())
        try:
            # compensate's bytearray goes on uncopied (ESP/AH copy it anyway)
            packet = compensate(view, binding.out, tunnel=state.tunnel)
            if ports is not None and self.algs.active:
                packet = self.algs.outgoing(packet, view.protocol, ports[1], binding)
        except NotCompensable as err:
            raise Uncompensable(str(err)) from None
        self.compensated_out += 1
        return packet

    def after_unprotect(self, packet: Packet, state: SAState) -> Packet:
        """Steps 822-826 on a packet verified and decrypted under ``state``."""
        if not self.compensate:
            return packet
        view, block, ports = self._parse(packet)
        if block is None:
            binding = self._address_only
        else:
            global_port = _ports(ports)[1]
            found = block.lookup(global_port, self.clock())
            if found is None:
                raise NoBinding(f"{view.protocol}/{global_port}: no connection is bound to this global port")
            binding = found
        try:
            if ports is not None and self.algs.active:
                changed = self.algs.incoming(packet, view.protocol, ports[0], binding)
                if changed is not packet:  # an ALG may have changed the lengths
                    packet, view = changed, IPv4View(changed)
            packet = compensate(view, binding.into, tunnel=state.tunnel)  # uncopied, as above
        except (NotCompensable, MalformedPacket) as err:
            raise Uncompensable(str(err)) from None
        self.compensated_in += 1
        return packet

    def _parse(self, packet: Packet) -> tuple[IPv4View, PortBlock | None, tuple[int, int] | None]:
        """The view, port block and ports of ``packet``, read once; a packet of a ported protocol without
        ports to read (a fragment, a truncated header) is refused before any port is bound."""
        try:
            view = IPv4View(packet)
        except MalformedPacket as err:
            raise Uncompensable(str(err)) from None
        protocol = packet[PROTOCOL_OFFSET]
        block = self.blocks.get(protocol)
        if block is None:  # no leased block: addresses only, ports (if any) for the ALGs
            return view, None, view.ports() if protocol in PORTED else None
        ports = view.whole_ports()
        if ports is None:
            raise Uncompensable("a fragment, or a truncated transport header: no ports to compensate")
        return view, block, ports

    @property
    def counters(self) -> Counter[str]:
        """Packets compensated each way."""
        return Counter(compensated_out=self.compensated_out, compensated_in=self.compensated_in)

    def status(self) -> dict[str, Any]:
        """For status.json: the global IP, each block and its bindings, the counters."""
        return {
            "global_ip": self.global_ip, "compensate": self.compensate, "counters": dict(self.counters),
            "algs": dict(self.algs.counters),
            "blocks": {
                {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}.get(proto, str(proto)): {
                    "ports": [block.low, block.high], "reclaimed": block.reclaimed,
                    "bindings": {b.private_port: b.global_port for b in block.bindings()},
                } for proto, block in self.blocks.items()
            },
        }
