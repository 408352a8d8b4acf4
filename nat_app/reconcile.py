"""What the NAT does when r1 (re)connects: agree with the flows r1 still has.

r1 runs with ``fail_mode=secure``: while the controller is away it keeps its
flows and forwards nothing else (never standalone L2 switching, which would
put private addresses on the outside). So after a controller restart r1
still translates every established connection, and the saved state
(nat_app/store.py) still names those flows by cookie (the entry id). The
core then keeps both instead of wiping r1:

- flows whose cookie names nothing known are deleted (an entry removed
  after the last save, a stale group flow);
- fast-path NAPT entries whose flows vanished while the controller was away
  (idle timeouts whose FlowRemoved nobody heard) are forgotten, ports freed;
- the base flows are added again (an add replaces an identical flow).

The state counts as lost, and the core starts empty with a new epoch (RFC
6887 8.5), when the controller has no saved state, or when r1 has none of
the base flows (r1 itself restarted: its flows, and with them every
translation the saved state describes, are gone). Then every flow is
deleted and the NAT multicasts PCP ANNOUNCE (RFC 6887 14.1.3) so that every
client leases again at once.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from nat_app.messages import COOKIE_INFRA, DeleteFlows, Message, Output, PacketOut
from nat_app.table import DataPath, Entry, EntryKind
from netwire import pcp
from netwire.ethernet import ETH_TYPE_IPV4, EthernetHeader
from netwire.ipv4 import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, build_udp

__pure__ = True

if TYPE_CHECKING:
    from nat_app.decide import NatCore

ALL_HOSTS = "224.0.0.1"  # RFC 6887 14.1.3: unsolicited ANNOUNCEs go to the all-hosts group
ALL_HOSTS_MAC = "01:00:5e:00:00:01"  # RFC 1112 6.4: 01:00:5e + the group's low 23 bits
# RFC 6887 14.1.3 (as NAT-PMP, RFC 6886 3.2.1): ten ANNOUNCEs, the first at once, the gaps
# starting at 250 ms and doubling.
ANNOUNCE_COUNT = 10
ANNOUNCE_FIRST_GAP_S = 0.25
_FLOWS_PER_NAPT_ENTRY = 2  # one each way (decide._translation_flows)


def reconcile(core: NatCore, flows_seen: list[tuple[int, int]], now: float) -> list[Message]:
    """Messages that make r1's flows and the core's state agree; see the module docstring."""
    cookies = Counter(cookie for cookie, _priority in flows_seen)
    if core.state_lost or not cookies.get(COOKIE_INFRA):
        return start_empty(core, now)
    msgs: list[Message] = []
    for entry in list(core.table):
        if _lost_its_flows(entry, cookies, core.config.globals):
            core.counters.add("entries_lost_while_away")
            msgs += core._forget(entry, now)
    known = _known_cookies(core)
    core.client_alg.forget_outbound(core.client_alg.cookies() - cookies.keys())
    for cookie in sorted(cookies.keys() - known):
        core.counters.add("stale_flows_deleted")
        msgs.append(DeleteFlows(cookie))
    msgs += core.base_flows()
    if core.bypass:
        msgs += core.set_bypass(True)
    core.counters.add("reconciled")
    return msgs


def start_empty(core: NatCore, now: float) -> list[Message]:
    """No usable state: wipe r1, begin a new epoch, and tell every client (RFC 6887 14.1.3)."""
    core._reset(now)
    core.state_lost = False
    core.counters.add("started_empty")
    return [DeleteFlows(None), *core.base_flows(), *announcements(core, now)]


def announcements(core: NatCore, now: float) -> list[PacketOut]:
    """The ten unsolicited ANNOUNCE responses, each with the epoch it will carry when sent."""
    c = core.config
    msgs = []
    delay, gap = 0.0, ANNOUNCE_FIRST_GAP_S
    for _ in range(ANNOUNCE_COUNT):
        body = pcp.encode_response(pcp.Response(pcp.Opcode.ANNOUNCE, pcp.Result.SUCCESS, 0,
                                                core.leases.epoch(now + delay), None))
        packet = build_udp(c.gateway_ip, ALL_HOSTS, pcp.SERVER_PORT, pcp.CLIENT_PORT, body, ttl=1)
        frame = EthernetHeader(ALL_HOSTS_MAC, c.inside_mac, ETH_TYPE_IPV4).build() + packet
        msgs.append(PacketOut(frame, (Output(c.inside_port),), delay=delay))
        delay, gap = delay + gap, gap * 2
    core.counters.add("announce_scheduled")
    return msgs


def _lost_its_flows(entry: Entry, cookies: Counter[int], globals_: tuple[str, ...] = ()) -> bool:
    """A fast-path entry with flows of its own (cookie = its id) that r1 no longer has in full."""
    if entry.path is not DataPath.FAST:
        return False
    if entry.kind is EntryKind.NAT_ALG and entry.protocol in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP):
        # a hairpin sender's entry (foreign = a global of ours) has one flow per target (nat_app/hairpin.py)
        need = 1 if entry.foreign in globals_ else _FLOWS_PER_NAPT_ENTRY
        return cookies.get(entry.id, 0) < need
    if entry.kind is EntryKind.CLIENT_ALG and entry.port_keyed:
        return cookies.get(entry.id, 0) < 1  # a MAP/PEER lease's inbound flow
    return False  # leases of defined protocols share group flows (client_alg.py)


def _known_cookies(core: NatCore) -> set[int]:
    from nat_app.decide import COOKIE_BYPASS

    return ({COOKIE_INFRA, COOKIE_BYPASS} | {e.id for e in core.table} | core.client_alg.cookies()
            | set(core._slow_triples.values()))
