"""The NAT's own FTP ALG for cleartext FTP (NAT-AUTO: "for protocols it supports it makes NAT-ALG entries by
itself and runs any ALG they need"; RFC 959, RFC 2428; the job Linux's nf_nat_ftp does).

An active-mode client behind the NAT names its private address in PORT/EPRT;
the server refuses it or cannot reach it. So the control connection (TCP to
port 21) is translated on the controller's slow path: outbound segments reach
the controller through one punt flow for TCP destination port 21 from the
inside, inbound ones through a punt flow for that connection alone (nothing
else from outside reaches the controller). On the way out PORT/EPRT get the
client's global IP and the global port of a NAT-ALG mapping made for the
private port the client listens on (endpoint-independent, RFC 4787 REQ-1),
whose translation flows go into r1 at once: the data connection the server
opens runs on the fast path. The rewrite changes the stream's length, so
SEQ/ACK/SACK are adjusted (:mod:`netwire.tcprewrite`). Passive mode needs
nothing here: 227/229 name the server, which is not behind this NAT.

Pure: the core's table, pool and flow builders in, Messages out.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nat_app.allocate import PortLimitReached
from nat_app.messages import PRIO_PUNT, PRIO_SLOW_PATH, AddFlow, DeleteFlows, Message, Output, PacketOut, ToController
from nat_app.table import DataPath, Entry, EntryKind, TableConflict
from nat_app.translate import rewrite
from netwire.ethernet import ETH_TYPE_IPV4
from netwire.ftp import FTP_CONTROL_PORT, data_rewriter, might_be_data_command
from netwire.ipv4 import IPPROTO_TCP, IPv4Header
from netwire.tcprewrite import LineRewriter, PrefixedCounters, rewrite_segment

__pure__ = True

if TYPE_CHECKING:
    from nat_app.decide import NatCore

EXPECT_IDLE_S = 120  # an offered data mapping unused this long goes (its out flow's idle timeout)


class _CoreCounters(MutableMapping[str, int]):
    """The core's counters (which only ``add``) as the mapping a LineRewriter counts into."""

    def __init__(self, core: NatCore) -> None:
        self.core = core

    def __getitem__(self, name: str) -> int:
        return self.core.counters[name]

    def __setitem__(self, name: str, value: int) -> None:
        self.core.counters.add(name, value - self.core.counters[name])

    def __delitem__(self, name: str) -> None:
        raise TypeError("the NAT's counters only grow")

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.core.counters.values))

    def __len__(self) -> int:
        return len(self.core.counters.values)


@dataclass
class _Control:
    out: LineRewriter
    in_: LineRewriter


class NatFtp:
    """The control connections the NAT rewrites, by entry id."""

    def __init__(self, core: NatCore) -> None:
        self.core = core
        self.counters = PrefixedCounters(_CoreCounters(core), "ftp:")
        self.controls: dict[int, _Control] = {}

    def base_flows(self) -> list[Message]:
        """Control segments from inside to port 21 go to the controller (the slow path of this ALG)."""
        c = self.core.config
        return [AddFlow(PRIO_PUNT, {"in_port": c.inside_port, "eth_type": ETH_TYPE_IPV4, "ip_proto": IPPROTO_TCP,
                                    "tcp_dst": FTP_CONTROL_PORT}, (ToController(),))]

    def owns(self, entry: Entry) -> bool:
        return entry.id in self.controls

    def is_control(self, protocol: int, dst_port: int | None) -> bool:
        return protocol == IPPROTO_TCP and dst_port == FTP_CONTROL_PORT

    def control_out(self, entry: Entry | None, packet: bytes, ip: IPv4Header, port: int, private_mac: str,
                    foreign_mac: str, now: float) -> list[Message]:
        """A client's segment to TCP port 21: a new control connection, or one on an existing mapping, or one
        of ours; rewritten and translated."""
        msgs: list[Message] = []
        if entry is None:
            entry, msgs = self.new_control(ip, port, now)
            if entry is None:
                return msgs
        elif not self.owns(entry):
            msgs = self.adopt(entry)
        return msgs + self.outbound(entry, packet, private_mac, foreign_mac, now)

    def new_control(self, ip: IPv4Header, port: int, now: float) -> tuple[Entry | None, list[Message]]:
        """A NAT-ALG entry on the slow path for a new control connection, and the punt of its inbound side."""
        core, c = self.core, self.core.config
        mapping = self._mapping(ip.src, port, now)
        if mapping is None:
            return None, core._drop("ftp-no-port")
        try:
            entry = core.table.add(kind=EntryKind.NAT_ALG, protocol=IPPROTO_TCP, private_ip=ip.src, private_gpn=port,
                                   global_ip=mapping[0], global_gpn=mapping[1], foreign=ip.dst, now=now,
                                   expires=now + c.tcp_timeout, path=DataPath.SLOW)
        except TableConflict:
            core.pool.release_mapping(IPPROTO_TCP, ip.src, port, now)
            return None, core._drop("table-conflict")
        core.counters.add("entries_created")
        self.controls[entry.id] = _Control(LineRewriter(None, might_be_data_command, counters=self.counters),
                                           LineRewriter(counters=self.counters))
        core.counters.add("ftp:control-connections")
        punt = AddFlow(PRIO_SLOW_PATH, {
            "in_port": c.outside_port, "eth_type": ETH_TYPE_IPV4, "ip_proto": IPPROTO_TCP, "ipv4_src": ip.dst,
            "ipv4_dst": entry.global_ip, "tcp_src": FTP_CONTROL_PORT, "tcp_dst": entry.global_gpn},
            (ToController(),), cookie=entry.id)
        return entry, [punt]

    def adopt(self, entry: Entry) -> list[Message]:
        """An existing mapping whose private port now opens a control connection (the port of an earlier data
        connection, reused by the client's kernel): rewritten from now on, its inbound side punted too."""
        c = self.core.config
        self.controls[entry.id] = _Control(LineRewriter(None, might_be_data_command, counters=self.counters),
                                           LineRewriter(counters=self.counters))
        self.counters["adopted-mapping"] += 1
        return [AddFlow(PRIO_SLOW_PATH, {
            "in_port": c.outside_port, "eth_type": ETH_TYPE_IPV4, "ip_proto": IPPROTO_TCP, "ipv4_src": entry.foreign,
            "ipv4_dst": entry.global_ip, "tcp_src": FTP_CONTROL_PORT, "tcp_dst": entry.global_gpn},
            (ToController(),), cookie=entry.id)]

    def outbound(self, entry: Entry, packet: bytes, private_mac: str, foreign_mac: str,
                 now: float) -> list[Message]:
        """A client's control segment: PORT/EPRT rewritten (and their data mappings made), then translated."""
        core, c = self.core, self.core.config
        control = self.controls[entry.id]
        flows: list[Message] = []
        control.out.rewrite = data_rewriter(entry.private_ip, entry.global_ip,
                                            lambda p: self._expect(entry, p, private_mac, foreign_mac, now, flows),
                                            self.counters)
        rewritten = rewrite_segment(packet, control.out, control.in_, self.counters)
        self._touch(entry, now)
        if rewritten is None:
            return core._drop("ftp-out-of-order")
        out = rewrite(rewritten, src=entry.global_ip, src_port=entry.global_gpn)
        return [*flows, PacketOut(core._eth(foreign_mac, c.outside_mac) + out, (Output(c.outside_port),))]

    def inbound(self, entry: Entry, packet: bytes, private_mac: str, now: float) -> list[Message]:
        """A server's control segment: translated, its ACK and SACK edges moved back."""
        core, c = self.core, self.core.config
        control = self.controls[entry.id]
        translated = rewrite(packet, dst=entry.private_ip, dst_port=entry.private_gpn)
        mapped = rewrite_segment(translated, control.in_, control.out, self.counters)
        self._touch(entry, now)
        if mapped is None:
            return core._drop("ftp-out-of-order")
        return [PacketOut(core._eth(private_mac, c.inside_mac) + mapped, (Output(c.inside_port),))]

    def forget(self, entry: Entry) -> list[Message]:
        """The entry went: its rewriters go, and the punt flow of its inbound side (a fast entry's flows,
        an adopted punt among them, are deleted by their cookie already)."""
        if self.controls.pop(entry.id, None) is None or entry.path is DataPath.FAST:
            return []
        return [DeleteFlows(entry.id)]

    def _expect(self, control: Entry, port: int, private_mac: str, foreign_mac: str, now: float,
                flows: list[Message]) -> int | None:
        """The global port the server's data connection to ``port`` will come to; its flows appended to ``flows``."""
        core = self.core
        entry = core.table.lookup_out(IPPROTO_TCP, control.private_ip, port, control.foreign)
        if entry is None:
            mapping = self._mapping(control.private_ip, port, now)
            if mapping is None or mapping[0] != control.global_ip:
                return None
            try:
                entry = core.table.add(kind=EntryKind.NAT_ALG, protocol=IPPROTO_TCP, private_ip=control.private_ip,
                                       private_gpn=port, global_ip=mapping[0], global_gpn=mapping[1],
                                       foreign=control.foreign, now=now, idle_timeout=EXPECT_IDLE_S)
            except TableConflict:
                core.pool.release_mapping(IPPROTO_TCP, control.private_ip, port, now)
                return None
            core.counters.add("entries_created")
            core.counters.add("ftp:data-mappings")
            flows += core._translation_flows(entry, private_mac, foreign_mac)
        return entry.global_gpn

    def _mapping(self, private_ip: str, port: int, now: float) -> tuple[str, int] | None:
        try:
            return self.core.pool.acquire_mapping(IPPROTO_TCP, private_ip, port, now)
        except PortLimitReached:
            self.core.counters.add("ftp:port-limit")
            return None

    def _touch(self, entry: Entry, now: float) -> None:
        c = self.core.config
        if entry.expires is not None and entry.expires < now + c.tcp_timeout - 1:
            self.core.table.set_expiry(entry.id, now + c.tcp_timeout)
