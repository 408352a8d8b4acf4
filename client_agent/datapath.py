"""The agent's packet loop: TUN -> SPD -> ESP/AH -> raw socket, and back (RFC 4301 section 5).

Outbound, every packet the kernel routes into the TUN device goes through
:func:`~client_agent.ipsec.processing.outbound` (SPD lookup, then
encapsulation under the policy's SA, RFC 4301 section 5.1) and leaves through
the raw sender. Inbound, every ESP/AH packet a raw receiver gets goes through
:func:`~client_agent.ipsec.processing.inbound` (SAD lookup by SPI, verification,
decryption, then the SPD check of the inner packet, section 5.2) and is written
to the TUN device, where the kernel delivers it locally or forwards it (a
tunnel-mode gateway hands it on to the intranet the same way).

The loop works on ``bytes`` and touches nothing per packet but the core and
two system calls; when a descriptor is readable it drains up to
:data:`BATCH` packets before polling again. Every refused packet is counted by
its :class:`~client_agent.ipsec.errors.DropReason` (plus ``send_error`` and
``tun_error`` for what the kernel refused) and logged, at most once per
second per reason.

Behind the extensible NAT, a :class:`~client_agent.traversal.Traversal`
adds module 109's steps (seed FIG. 9-10) inside that processing: compensation
and client ALGs on the cleartext, AH computed and verified over the global address.

Descriptors come in as small objects (:class:`PacketSource`,
:class:`PacketSink`), so tests drive the loop with socket pairs instead of a
TUN device and raw sockets.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from client_agent.coalesce import VNET_HDR_LEN, frames
from client_agent.ipsec.errors import IPsecError
from client_agent.ipsec.processing import inbound, outbound
from client_agent.ipsec.sad import SAD
from client_agent.ipsec.spd import SPD
from client_agent.traversal import Traversal
from netwire.view import Packet

BATCH = 64  # packets taken from one descriptor before the others get a turn
SEND_ERROR = "send_error"  # the kernel refused to send (EMSGSIZE, ENOBUFS, unreachable)
TUN_ERROR = "tun_error"  # the kernel refused a packet written to the TUN device

log = logging.getLogger("natlab.agent")


class PacketSource(Protocol):
    """A non-blocking descriptor that yields one packet per read (a TUN device, a raw receiver)."""

    def fileno(self) -> int: ...
    def read(self) -> bytes | None: ...


class PacketSink(Protocol):
    """Where delivered packets go: the TUN device (``write``); a compensated packet arrives as the
    bytearray the rewrite made (client_agent/traversal.py), uncopied."""

    def __call__(self, packet: Packet, /) -> None: ...


class WireSink(Protocol):
    """Where protected packets go: the raw sender (``send``); ESP/AH always build new bytes."""

    def __call__(self, packet: bytes, /) -> None: ...


@dataclass
class Counters:
    """What the datapath did, in packets and octets, and what it dropped by reason.

    ``sent_octets``/``received_octets`` count ESP/AH on the wire;
    ``protected_octets``/``delivered_octets`` the cleartext packets that went in and came out.
    """

    protected: int = 0
    protected_octets: int = 0
    sent_octets: int = 0
    bypassed: int = 0
    received: int = 0
    received_octets: int = 0
    delivered: int = 0
    delivered_octets: int = 0
    tun_writes: int = 0  # frames written with coalescing (one per super-segment): delivered / tun_writes = merged
    drops: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int | dict[str, int]]:
        return {
            "protected": self.protected, "protected_octets": self.protected_octets, "sent_octets": self.sent_octets,
            "bypassed": self.bypassed, "received": self.received, "received_octets": self.received_octets,
            "delivered": self.delivered, "delivered_octets": self.delivered_octets, "tun_writes": self.tun_writes,
            "drops": dict(self.drops),
        }


class DropLog:
    """Logs drops with their reason, at most one line per reason per ``interval`` seconds.

    The line after a quiet spell says how many drops of that reason went unlogged.
    """

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._next: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def __call__(self, reason: str, direction: str, detail: object) -> None:
        now = self.clock()
        if now < self._next.get(reason, 0.0):
            self._unlogged[reason] += 1
            return
        self._next[reason] = now + self.interval
        more = self._unlogged.pop(reason, 0)
        suffix = f" (and {more} more since the last report)" if more else ""
        log.warning("drop %s %s: %s%s", direction, reason, detail, suffix)


class Datapath:
    """Moves packets between a TUN device and raw sockets through the IPsec core.

    ``tun`` is read for outbound packets and ``deliver`` writes inbound ones to
    it; ``receivers`` yield received ESP/AH packets; ``send`` puts a protected
    packet on the wire.
    """

    def __init__(
        self, tun: PacketSource, deliver: PacketSink, receivers: Sequence[PacketSource], send: WireSink,
        sad: SAD, spd: SPD, *, drop_log: Callable[[str, str, object], None] | None = None,
        traversal: Traversal | None = None, deliver_frame: PacketSink | None = None,
    ) -> None:
        self.tun = tun
        self.deliver = deliver
        self.deliver_frame = deliver_frame  # set: inbound TCP is coalesced (client_agent.coalesce) and written here
        self.receivers = list(receivers)
        self.send = send
        self.sad = sad
        self.spd = spd
        self.counters = Counters()
        self.drop_log = drop_log or DropLog()
        self.traversal = traversal
        if traversal is None:
            self._out_hooks: dict = {}
            self._in_hooks: dict = {}
        else:
            self._out_hooks = {"icv_src": traversal.icv_src, "before": traversal.before_protect}
            self._in_hooks = {"icv_dst": traversal.icv_dst, "after": traversal.after_unprotect}

    def pump_outbound(self) -> int:
        """Protect and send up to :data:`BATCH` packets waiting in the TUN device; returns how many were read."""
        read, send, spd, count, hooks = self.tun.read, self.send, self.spd, self.counters, self._out_hooks
        taken = 0
        while taken < BATCH:
            packet = read()
            if packet is None:
                break
            taken += 1
            try:
                wire = outbound(packet, spd, **hooks)
                send(wire)
            except IPsecError as err:
                self._drop(err.reason, "outbound", err)
            except OSError as err:
                self._drop(SEND_ERROR, "outbound", err)
            else:
                if wire is packet:
                    count.bypassed += 1
                else:
                    count.protected += 1
                    count.protected_octets += len(packet)
                    count.sent_octets += len(wire)
        return taken

    def pump_inbound(self, receiver: PacketSource) -> int:
        """Verify, unprotect and deliver up to :data:`BATCH` packets from ``receiver``; returns how many were read.

        With ``deliver_frame`` the batch's packets are written at its end as
        frames, consecutive TCP segments of a connection as one super-segment.
        """
        read, deliver, sad, spd, count = receiver.read, self.deliver, self.sad, self.spd, self.counters
        hooks = self._in_hooks
        ready: list[Packet] | None = None if self.deliver_frame is None else []
        taken = 0
        while taken < BATCH:
            packet = read()
            if packet is None:
                break
            taken += 1
            count.received += 1
            count.received_octets += len(packet)
            try:
                inner = inbound(packet, sad, spd, **hooks)
                if ready is not None:
                    ready.append(inner)
                    continue
                deliver(inner)
            except IPsecError as err:
                self._drop(err.reason, "inbound", err)
            except OSError as err:
                self._drop(TUN_ERROR, "inbound", err)
            else:
                count.delivered += 1
                count.delivered_octets += len(inner)
        if ready:
            self._deliver_frames(ready)
        return taken

    def _deliver_frames(self, packets: list[Packet]) -> None:
        """Write ``packets`` as coalesced frames; a refused frame drops every packet in it."""
        count, write = self.counters, self.deliver_frame
        assert write is not None
        for frame, n in frames(packets):
            try:
                write(frame)
            except OSError as err:
                for _ in range(n):
                    self._drop(TUN_ERROR, "inbound", err)
            else:
                count.tun_writes += 1
                count.delivered += n  # octets as they were before merging: each segment had its own headers
                count.delivered_octets += len(frame) - VNET_HDR_LEN + (n - 1) * (frame[2] | frame[3] << 8)

    def run(
        self, should_stop: Callable[[], bool], *, wakeup_fd: int | None = None,
        on_tick: Callable[[], None] | None = None, tick: float = 1.0,
        extra: dict[int, Callable[[], object]] | None = None,
    ) -> None:
        """Poll and pump until ``should_stop()``; ``on_tick`` runs about every ``tick`` seconds.

        ``wakeup_fd`` (e.g. the one given to :func:`signal.set_wakeup_fd`) is
        drained when readable, so that a signal ends the wait at once.
        ``extra`` maps more descriptors to what reads them (the lease socket).
        """
        pumps: dict[int, Callable[[], object]] = {self.tun.fileno(): self.pump_outbound}
        for receiver in self.receivers:
            pumps[receiver.fileno()] = functools.partial(self.pump_inbound, receiver)
        if wakeup_fd is not None:
            pumps[wakeup_fd] = lambda: len(_drain(wakeup_fd))
        pumps.update(extra or {})
        poller = select.poll()
        for fd in pumps:
            poller.register(fd, select.POLLIN)
        next_tick = time.monotonic() + tick
        while not should_stop():
            for fd, _events in poller.poll(tick * 1000):
                pumps[fd]()
            if on_tick is not None and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + tick
                on_tick()

    def _drop(self, reason: str, direction: str, detail: object) -> None:
        self.counters.drops[reason] += 1
        self.drop_log(reason, direction, detail)


def _drain(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""
