"""Where the packets of leased protocols (ESP, AH, ISAKMP) are translated.

OpenFlow can match the protocol, the addresses and a UDP port, but not an SPI
or a cookie. So inbound packets of a (protocol, global IP) that one private
host alone holds entries on are translated by flows in r1 (the fast path);
once a second host holds entries there, the triple's packets go to the
controller, which demultiplexes them by GPN (the slow path, DESIGN.md). The
allocator prefers global IPs that keep clients on the fast path. Outbound
packets only need their source address changed, so each (protocol, private
host, foreign host) gets one flow on its first packet.
"""

from __future__ import annotations

import itertools
from typing import Any

from nat_app.config import NatConfig
from nat_app.gpn import Definition, GpnSpace
from nat_app.messages import (
    PRIO_SLOW_PATH,
    PRIO_TRANSLATE,
    Action,
    AddFlow,
    Barrier,
    DecTtl,
    DeleteFlows,
    Message,
    Output,
    SetField,
    ToController,
)
from nat_app.table import DataPath, Entry, TranslationTable
from netwire.ethernet import ETH_TYPE_IPV4
from netwire.pcp import UNDERLYING_UDP

__pure__ = True

COOKIE_CLIENT_ALG = 1 << 61  # | a counter: flows shared by a group of leased entries
PRIO_CLIENT_ALG_OUT = PRIO_TRANSLATE + 1  # above NAPT flows of the same UDP port


class ClientAlgPaths:
    def __init__(self, config: NatConfig, table: TranslationTable) -> None:
        self.config = config
        self.table = table
        self._cookies = itertools.count(1)
        self._inbound: dict[tuple[GpnSpace, str, str | None], list[Any]] = {}  # (key, global IP, foreign) -> [cookie, entries]
        self._punts: dict[tuple[GpnSpace, str], int] = {}  # (key, global IP) -> cookie of the punt flow
        self._outbound: dict[tuple[GpnSpace, str], dict[str, int]] = {}  # (key, private IP) -> {foreign: cookie}

    def is_slow(self, key: GpnSpace, global_ip: str) -> bool:
        return (key, global_ip) in self._punts

    def added(self, entry: Entry, definition: Definition, private_mac: str) -> tuple[list[Message], bool]:
        """Flows for a new leased entry; True when its lease answer must wait for a demotion to settle."""
        group = (entry.space, entry.global_ip)
        if group in self._punts:
            entry.path = DataPath.SLOW
            return [], False
        if self.table.hosts_on(*group) == {entry.private_ip}:
            entry.path = DataPath.FAST
            key = (entry.space, entry.global_ip, entry.foreign)
            if key in self._inbound:
                self._inbound[key][1] += 1
                return [], False
            cookie = self._cookie()
            self._inbound[key] = [cookie, 1]
            c = self.config
            actions = (SetField("ipv4_dst", entry.private_ip), SetField("eth_src", c.inside_mac),
                       SetField("eth_dst", private_mac), DecTtl(), Output(c.inside_port))
            return [AddFlow(PRIO_TRANSLATE, self._inbound_match(definition, entry.global_ip, entry.foreign),
                            actions, cookie=cookie)], False
        return self._demote(group, definition), True

    def _demote(self, group: tuple[GpnSpace, str], definition: Definition) -> list[Message]:
        """A second host on (protocol, global IP): the controller demultiplexes from now on."""
        msgs: list[Message] = []
        for key in [k for k in self._inbound if k[:2] == group]:
            msgs.append(DeleteFlows(self._inbound.pop(key)[0]))
        for host in self.table.hosts_on(*group):
            for entry in self.table.entries_of(group[0], host):
                if entry.global_ip == group[1]:
                    entry.path = DataPath.SLOW
        cookie = self._punts[group] = self._cookie()
        msgs.append(AddFlow(PRIO_SLOW_PATH, self._inbound_match(definition, group[1], None), (ToController(),),
                            cookie=cookie))
        return [*msgs, Barrier()]

    def removed(self, entry: Entry) -> list[Message]:
        """Flows no entry needs any more once ``entry`` is gone (it is out of the table already)."""
        msgs: list[Message] = []
        group = (entry.space, entry.global_ip)
        if group in self._punts:
            if not self.table.hosts_on(*group):
                msgs.append(DeleteFlows(self._punts.pop(group)))
        else:
            key = (entry.space, entry.global_ip, entry.foreign)
            held = self._inbound.get(key)
            if held is not None:
                held[1] -= 1
                if held[1] <= 0:
                    msgs.append(DeleteFlows(self._inbound.pop(key)[0]))
        if not self.table.entries_of(entry.space, entry.private_ip):
            for cookie in self._outbound.pop((entry.space, entry.private_ip), {}).values():
                msgs.append(DeleteFlows(cookie))
        return msgs

    def outbound(self, entry: Entry, definition: Definition, foreign: str, foreign_mac: str) -> tuple[list[Message], tuple[Action, ...]]:
        """The flow for (protocol, private host, foreign host), and the actions for its first packet."""
        c = self.config
        actions = (SetField("ipv4_src", entry.global_ip), SetField("eth_src", c.outside_mac),
                   SetField("eth_dst", foreign_mac), DecTtl(), Output(c.outside_port))
        flows = self._outbound.setdefault((entry.space, entry.private_ip), {})
        if foreign in flows:
            return [], actions
        match = {"in_port": c.inside_port, "eth_type": ETH_TYPE_IPV4, "ip_proto": definition.ip_protocol,
                 "ipv4_src": entry.private_ip, "ipv4_dst": foreign}
        if definition.underlying == UNDERLYING_UDP:
            match["udp_src"] = definition.port
        cookie = flows[foreign] = self._cookie()
        return [AddFlow(PRIO_CLIENT_ALG_OUT, match, actions, cookie=cookie)], actions

    def _inbound_match(self, definition: Definition, global_ip: str, foreign: str | None) -> dict[str, Any]:
        match = {"in_port": self.config.outside_port, "eth_type": ETH_TYPE_IPV4,
                 "ip_proto": definition.ip_protocol, "ipv4_dst": global_ip}
        if definition.underlying == UNDERLYING_UDP:
            match["udp_dst"] = definition.port
        if foreign is not None:
            match["ipv4_src"] = foreign
        return match

    def _cookie(self) -> int:
        return COOKIE_CLIENT_ALG | next(self._cookies)

    # ------------------------------------------- persistence (nat_app/state.py, nat_app/store.py)

    def export(self) -> dict[str, Any]:
        """Cookies of the shared flows, so a restarted controller recognises them in r1."""
        n = next(self._cookies)
        self._cookies = itertools.count(n)
        return {"next": n, "inbound": [[*k, c, users] for k, (c, users) in self._inbound.items()],
                "punts": [[*k, c] for k, c in self._punts.items()],
                "outbound": [[*k, f, c] for k, flows in self._outbound.items() for f, c in flows.items()]}

    def restore(self, saved: dict[str, Any]) -> None:
        """Rebuild from ``export()``; KeyError/ValueError/TypeError if malformed."""
        self._cookies = itertools.count(int(saved["next"]))
        self._inbound = {(GpnSpace(int(k)), g, f): [int(c), int(n)] for k, g, f, c, n in saved["inbound"]}
        self._punts = {(GpnSpace(int(k)), g): int(c) for k, g, c in saved["punts"]}
        for k, private, foreign, cookie in saved["outbound"]:
            self._outbound.setdefault((GpnSpace(int(k)), private), {})[foreign] = int(cookie)

    def cookies(self) -> set[int]:
        """Every flow cookie these paths own in r1."""
        return ({c for c, _ in self._inbound.values()} | set(self._punts.values())
                | {c for flows in self._outbound.values() for c in flows.values()})

    def forget_outbound(self, cookies: set[int]) -> None:
        """Outbound flows r1 no longer has: the next packet installs them again."""
        for flows in self._outbound.values():
            for foreign in [f for f, c in flows.items() if c in cookies]:
                del flows[foreign]
