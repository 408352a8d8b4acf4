"""A fake switch for unit tests (r1 with NatCore, s1 with SaviCore): a flow table that applies the core's Messages.

Matching and rewriting use scapy, not our own code, so a test that passes
packets through it checks the core's decisions against an independent
packet implementation (checksums are recomputed by scapy, as OVS does).
"""

from __future__ import annotations

from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from nat_app.decide import NatCore
from nat_app.messages import (
    PORT_IN_PORT,
    AddFlow,
    Barrier,
    DecTtl,
    DeleteFlows,
    Output,
    PacketOut,
    SetField,
    SetMeter,
    ToController,
)
from nat_app.savi import SaviCore

_L4 = {"tcp_src": (TCP, "sport"), "tcp_dst": (TCP, "dport"), "udp_src": (UDP, "sport"), "udp_dst": (UDP, "dport")}


@dataclass
class Flow:
    msg: AddFlow
    packets: int = 0


class FakeSwitch:
    def __init__(self, core: NatCore | SaviCore, now: float = 0.0) -> None:
        self.core = core
        self.flows: list[Flow] = []
        self.out: dict[int, list[bytes]] = {}
        self.packet_ins = 0
        self.barriers = 0
        self.delays: list[float] = []
        self.meters: dict[int, SetMeter] = {}
        self.apply(core.switch_connected(now), now)

    def apply(self, messages, now: float = 0.0) -> None:
        for m in messages:
            if isinstance(m, AddFlow):
                assert m.meter is None or m.meter in self.meters, f"flow uses undefined meter {m.meter}"
                self.flows = [f for f in self.flows if (f.msg.priority, f.msg.match) != (m.priority, m.match)]
                self.flows.append(Flow(m))
            elif isinstance(m, DeleteFlows):
                self.flows = [f for f in self.flows if m.cookie is not None and f.msg.cookie != m.cookie]
            elif isinstance(m, Barrier):
                self.barriers += 1
            elif isinstance(m, SetMeter):
                self.meters[m.meter_id] = m
            elif isinstance(m, PacketOut):
                if m.delay:
                    self.delays.append(m.delay)
                self._execute(m.actions, m.data, m.in_port, now)
            else:
                raise AssertionError(f"unknown message {m!r}")

    def receive(self, in_port: int, frame: bytes, now: float = 0.0) -> None:
        """A frame arrives at r1 on ``in_port``."""
        fields = match_fields(in_port, frame)
        candidates = [f for f in self.flows if all(_matches(fields.get(k), v) for k, v in f.msg.match.items())]
        if not candidates:
            return
        flow = max(candidates, key=lambda f: f.msg.priority)
        flow.packets += 1
        self._execute(flow.msg.actions, frame, in_port, now)

    def take(self, port: int) -> list[bytes]:
        frames, self.out[port] = self.out.get(port, []), []
        return frames

    def flows_with_cookie(self, cookie: int) -> list[AddFlow]:
        return [f.msg for f in self.flows if f.msg.cookie == cookie]

    def remove_flow(self, cookie: int, now: float) -> None:
        """Simulate an idle timeout: the switch removes a flow and reports it."""
        self.flows = [f for f in self.flows if f.msg.cookie != cookie]
        self.apply(self.core.flow_removed(cookie, now), now)

    def expire_flow(self, cookie: int, now: float) -> None:
        """Simulate a SAVI flow's timeout: removed and reported with its packet count (OFPT_FLOW_REMOVED)."""
        packets = sum(f.packets for f in self.flows if f.msg.cookie == cookie)
        self.flows = [f for f in self.flows if f.msg.cookie != cookie]
        self.apply(self.core.flow_removed(cookie, now, packets=packets), now)

    def _execute(self, actions, frame: bytes, in_port: int | None, now: float) -> None:
        pkt = Ether(frame)
        changed = False
        for a in actions:
            if isinstance(a, ToController):
                self.packet_ins += 1
                self.apply(self.core.packet_in(in_port, frame, now), now)
                return
            if isinstance(a, SetField):
                _set(pkt, a.name, a.value)
                changed = True
            elif isinstance(a, DecTtl):
                pkt[IP].ttl -= 1
                changed = True
            elif isinstance(a, Output):
                if changed:
                    for layer in (IP, TCP, UDP, ICMP):
                        if layer in pkt:
                            del pkt[layer].chksum
                port = in_port if a.port == PORT_IN_PORT else a.port
                self.out.setdefault(port, []).append(bytes(pkt))


def match_fields(in_port: int, frame: bytes) -> dict:
    pkt = Ether(frame)
    f = {"in_port": in_port, "eth_src": pkt.src, "eth_type": pkt.type}
    if ARP in pkt:
        return {**f, "arp_spa": pkt[ARP].psrc, "arp_sha": pkt[ARP].hwsrc, "arp_op": pkt[ARP].op}
    if IP in pkt:
        ip = pkt[IP]
        f.update(ip_proto=ip.proto, ipv4_src=ip.src, ipv4_dst=ip.dst,
                 ip_frag=(1 if ip.frag or ip.flags.MF else 0) | (2 if ip.frag else 0))
        if f["ip_frag"]:
            return f  # OVS's "normal" frag handling: no L4 fields for any fragment
        if TCP in pkt:
            f.update(tcp_src=pkt[TCP].sport, tcp_dst=pkt[TCP].dport, tcp_flags=int(pkt[TCP].flags))
        elif UDP in pkt:
            f.update(udp_src=pkt[UDP].sport, udp_dst=pkt[UDP].dport)
        elif ICMP in pkt:
            f.update(icmpv4_type=pkt[ICMP].type)
    return f


def _matches(value, wanted) -> bool:
    """A match field: exact, or (value, mask) as os-ken takes masked fields."""
    if isinstance(wanted, tuple):
        return value is not None and value & wanted[1] == wanted[0]
    return value == wanted


def _set(pkt, name: str, value) -> None:
    if name == "ipv4_src":
        pkt[IP].src = value
    elif name == "ipv4_dst":
        pkt[IP].dst = value
    elif name == "eth_src":
        pkt[Ether].src = value
    elif name == "eth_dst":
        pkt[Ether].dst = value
    elif name in _L4:
        layer, attr = _L4[name]
        setattr(pkt[layer], attr, value)
    else:
        raise AssertionError(f"fake switch cannot set {name}")


def checksums_valid(frame: bytes) -> bool:
    """True if scapy, recomputing every checksum, gets the ones in the frame."""
    pkt = Ether(frame)
    rebuilt = pkt.copy()
    for layer in (IP, TCP, UDP, ICMP):
        if layer in rebuilt:
            if layer is UDP and pkt[UDP].chksum == 0:
                continue
            del rebuilt[layer].chksum
    return bytes(Ether(bytes(rebuilt))) == bytes(pkt)
