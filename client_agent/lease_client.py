"""The client side of the lease protocol, sans-IO (in the manner of h2 and aioquic).

A :class:`LeaseClient` owns no socket and reads no clock: the caller passes
``now`` (seconds, any monotonic origin) and moves the bytes::

    client = LeaseClient(plan.client_ip(1), plan.GATEWAY_IP)      # netwire.plan: the testbed's addresses
    tx = client.request(LeaseInfo(b"", 50, None, None, None, plan.server_ip(1)), LIFETIME_UNSPECIFIED, now)
    while not tx.done:
        for datagram in client.datagrams_to_send(now):
            sock.sendto(datagram, (server, SERVER_PORT))
        ... wait for a datagram or until client.timer(now) ...
        events = client.receive(datagram, now, source) if datagram else client.handle_timer(now)

What it does, after RFC 6887's client rules:

- retransmits unanswered requests (section 8.1.1: IRT 3 s, MRT 1024 s,
  MRC 0 and MRD 0, i.e. until answered, with +-10 % jitter), or gives up at
  a deadline the caller chooses;
- matches responses to requests by opcode and nonce, plus the fields
  sections 11.4 and 12.3 name, and ignores (and counts) everything else;
- renews each granted lease at a random point between 1/2 and 5/8 of its
  lifetime, then at 3/4-13/16, 7/8-29/32, ... if unanswered, never less than
  4 s apart (section 11.2.1), re-sending the request with the same nonce and
  the assigned values, so a NAT that lost state recreates the same entry;
- checks the server epoch in every matched response and ANNOUNCE (section
  8.5) and re-requests every live lease when the NAT has evidently restarted;
- releases a lease by sending it with lifetime 0 (section 15).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, replace

from netwire.pcp import (
    INFO_TYPES,
    LONG_ERROR_LIFETIME,
    GpnDefinition,
    Info,
    LeaseInfo,
    MapInfo,
    Opcode,
    Option,
    PcpError,
    PeerInfo,
    ReadInfo,
    Request,
    Response,
    Result,
    decode_response,
    encode_request,
    error_lifetime,
)

__pure__ = True

# RFC 6887 8.1.1 retransmission parameters.
IRT = 3.0  # initial retransmission time
MRT = 1024.0  # maximum retransmission time
MRC = 0  # maximum retransmission count: 0 = unlimited
MRD = 0.0  # maximum retransmission duration: 0 = unlimited
RAND = 0.1  # jitter, uniform in [-RAND, +RAND]
MIN_RENEWAL_SPACING = 4.0  # RFC 6887 11.2.1: renewals "MUST NOT be sent less than four seconds apart"
LEASABLE = frozenset({Opcode.MAP, Opcode.PEER, Opcode.LEASE, Opcode.DEFINE})

RETRANSMIT = "retransmit"  # RFC 6887 8.1.1 schedule
RENEWAL = "renewal"  # RFC 6887 11.2.1 schedule
_OPCODE_OF = {kind: Opcode(opcode) for opcode, kind in INFO_TYPES.items() if kind is not None}


@dataclass(eq=False)
class Lease:
    """A granted mapping (MAP, PEER, LEASE) or definition (DEFINE) the client keeps alive.

    ``info`` holds the values the NAT assigned, with the lease's nonce;
    ``granted_at`` is in the caller's clock.
    """

    opcode: Opcode
    info: Info
    requested_lifetime: int
    lifetime: int
    granted_at: float
    renew_at: float | None = None
    alive: bool = True
    attempts: int = 0  # renewal requests sent since the last grant
    transaction: Transaction | None = field(default=None, repr=False)

    @property
    def nonce(self) -> bytes:
        return self.info.nonce

    @property
    def id(self) -> str:
        """The nonce in hex: what the CLI and its state file call the lease."""
        return self.info.nonce.hex()

    @property
    def expires(self) -> float:
        return self.granted_at + self.lifetime


@dataclass(eq=False)
class Transaction:
    """One request until it is answered, given up, or superseded.

    ``purpose`` is "request", "renew" or "release"; ``outcome`` is the event
    that ended it (None while running, or if superseded by a newer one).
    """

    request: Request
    purpose: str
    lease: Lease | None
    started: float
    give_up_at: float | None
    schedule: str = RETRANSMIT
    next_send: float | None = None
    rt: float = 0.0  # RFC 6887 8.1.1 RT: the current retransmission timeout
    sent: int = 0
    last_sent: float | None = None
    done: bool = False
    outcome: Event | None = None
    datagram: bytes = b""

    @property
    def opcode(self) -> Opcode:
        return self.request.opcode

    @property
    def nonce(self) -> bytes:
        return self.request.info.nonce if self.request.info is not None else b""


@dataclass(frozen=True)
class Granted:
    """SUCCESS. ``lease`` is the lease made, renewed or released (None for READ and ANNOUNCE)."""

    transaction: Transaction
    response: Response
    lease: Lease | None = None


@dataclass(frozen=True)
class Refused:
    """An error result; ``lifetime`` is how long the same request would meet it again (RFC 6887 7.2)."""

    transaction: Transaction
    result: Result
    lifetime: int
    response: Response | None = None


@dataclass(frozen=True)
class TimedOut:
    """No answer before the transaction's deadline."""

    transaction: Transaction


@dataclass(frozen=True)
class Expired:
    """A lease's lifetime ran out before a renewal was granted."""

    lease: Lease


@dataclass(frozen=True)
class ServerRestarted:
    """The epoch check failed (RFC 6887 8.5): every live lease is being requested again."""

    previous_epoch: int
    epoch: int
    renewals: tuple[Transaction, ...] = ()


Event = Granted | Refused | TimedOut | Expired | ServerRestarted


class LeaseClient:
    """The lease protocol's client state machine for one client address and one server."""

    def __init__(self, client_ip: str, server_ip: str, rng: random.Random | None = None) -> None:
        self.client_ip = client_ip
        self.server_ip = server_ip
        self._rng = rng if rng is not None else random.SystemRandom()
        self.transactions: list[Transaction] = []
        self.leases: dict[bytes, Lease] = {}
        self.epoch: tuple[int, float] | None = None  # (last server epoch, our time when it arrived)
        self.counters: Counter[str] = Counter()

    # ------------------------------------------------------------------ requests

    def new_nonce(self) -> bytes:
        return self._rng.randbytes(12)

    def request(self, info: Info | None, lifetime: int, now: float, *, give_up_after: float | None = None,
                options: tuple[Option, ...] = ()) -> Transaction:
        """Queue a request; ``info=None`` is an ANNOUNCE. An empty nonce gets a fresh random one.

        Naming an existing lease's nonce renews that lease when granted.
        """
        if info is not None and not info.nonce:
            info = replace(info, nonce=self.new_nonce())
        opcode = Opcode.ANNOUNCE if info is None else _OPCODE_OF[type(info)]
        request = Request(opcode, lifetime, self.client_ip, info, options)
        lease = self.leases.get(info.nonce) if info is not None else None
        return self._start(request, "request", lease, now, give_up_after)

    def renew(self, lease: Lease, now: float, *, give_up_after: float | None = None) -> Transaction:
        """Renew ``lease`` now (RFC 6887 8.1.1 retransmission), e.g. on the user's command.

        Without ``give_up_after`` it keeps trying until the lease expires.
        """
        deadline = give_up_after if give_up_after is not None else max(lease.expires - now, 0.0)
        return self._start(self._renewal_request(lease), "renew", lease, now, deadline)

    def release(self, lease: Lease, now: float, *, give_up_after: float | None = None) -> Transaction:
        """Send ``lease`` with lifetime 0 (RFC 6887 15); no more renewals whatever the answer.

        MAP and PEER zero their suggested external fields as RFC 6887 15
        (with erratum 3621) asks; LEASE and DEFINE name the entry by all its
        assigned values. Without ``give_up_after`` it stops trying when the
        lease would have expired anyway.
        """
        info = lease.info
        if isinstance(info, MapInfo | PeerInfo):
            info = replace(info, external_port=0, external_ip=None)
        deadline = give_up_after if give_up_after is not None else max(lease.expires - now, 0.0)
        self._drop(lease)
        request = Request(lease.opcode, 0, self.client_ip, info)
        return self._start(request, "release", lease, now, deadline)

    def adopt(self, lease: Lease) -> Lease:
        """Take over a lease granted earlier (e.g. by another process, from a state file)."""
        lease.alive = True
        if lease.renew_at is None:
            lease.renew_at = lease.granted_at + lease.lifetime * self._rng.uniform(1 / 2, 5 / 8)
        self.leases[lease.nonce] = lease
        return lease

    # ------------------------------------------------------------------ I/O, without the I/O

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Every request due by ``now``: first transmissions, retransmissions, renewals."""
        out = []
        for tx in self.transactions:
            if tx.next_send is None or tx.next_send > now:
                continue
            if tx.sent and tx.give_up_at is not None and now >= tx.give_up_at:
                continue
            out.append(tx.datagram)
            self.counters["sent"] += 1
            self.counters["retransmitted"] += bool(tx.sent)
            tx.sent += 1
            tx.last_sent = now
            tx.next_send = self._next_send(tx, now)
        return out

    def receive(self, datagram: bytes, now: float, source: str | None = None) -> list[Event]:
        """Handle one datagram from the server. Never raises: anything else is counted and ignored."""
        self.counters["received"] += 1
        if source is not None and source != self.server_ip:
            self.counters["foreign_source"] += 1
            return []
        try:
            response = decode_response(datagram)
        except PcpError:
            self.counters["malformed"] += 1
            return []
        if response.opcode == Opcode.ANNOUNCE:
            tx = next((t for t in self.transactions if t.opcode == Opcode.ANNOUNCE), None)
        else:
            tx = next((t for t in self.transactions if _answers(t.request, response)), None)
            if tx is None:
                self.counters["unmatched"] += 1
                return []
        previous = self._check_epoch(response.epoch, now)
        events = [] if tx is None else [self._settle(tx, response, now)]
        if previous is not None:
            keep = tx.lease if tx is not None else None
            renewals = tuple(self._start(self._renewal_request(lease), "renew", lease, now, max(lease.expires - now, 0))
                             for lease in list(self.leases.values()) if lease is not keep)
            self.counters["server_restarts"] += 1
            events.insert(0, ServerRestarted(previous, response.epoch, renewals))
        return events

    def timer(self, now: float) -> float | None:
        """When to call :meth:`handle_timer` and :meth:`datagrams_to_send` next (never before ``now``)."""
        times = []
        for tx in self.transactions:
            times += [t for t in (tx.next_send, tx.give_up_at) if t is not None]
        for lease in self.leases.values():
            times.append(lease.expires)
            if lease.transaction is None and lease.renew_at is not None:
                times.append(lease.renew_at)
        return max(min(times), now) if times else None

    def handle_timer(self, now: float) -> list[Event]:
        """Give up on overdue transactions, expire leases, start renewals that are due."""
        events: list[Event] = []
        for tx in list(self.transactions):
            if tx.give_up_at is not None and now >= tx.give_up_at and (tx.sent or tx.next_send is None):
                events.append(self._finish(tx, TimedOut(tx)))
        for lease in list(self.leases.values()):
            if now >= lease.expires:
                self._drop(lease)
                events.append(Expired(lease))
            elif lease.transaction is None and lease.renew_at is not None and now >= lease.renew_at:
                tx = self._start(self._renewal_request(lease), "renew", lease, now, lease.expires - now)
                tx.schedule = RENEWAL
        return events

    # ------------------------------------------------------------------ internals

    def _start(self, request: Request, purpose: str, lease: Lease | None, now: float,
               give_up_after: float | None) -> Transaction:
        if lease is not None and lease.transaction is not None:
            self._retire(lease.transaction, None)  # superseded
        tx = Transaction(request, purpose, lease, now, None if give_up_after is None else now + give_up_after,
                         next_send=now, datagram=encode_request(request))
        if lease is not None and purpose != "release":
            lease.transaction = tx
        self.transactions.append(tx)
        return tx

    def _retire(self, tx: Transaction, outcome: Event | None) -> Event | None:
        tx.done, tx.outcome, tx.next_send = True, outcome, None
        if tx in self.transactions:
            self.transactions.remove(tx)
        if tx.lease is not None and tx.lease.transaction is tx:
            tx.lease.transaction = None
        return outcome

    def _finish(self, tx: Transaction, outcome: Event) -> Event:
        """Retire ``tx`` with the event that ends it, and return that event."""
        self._retire(tx, outcome)
        return outcome

    def _drop(self, lease: Lease) -> None:
        lease.alive = False
        if lease.transaction is not None:
            self._retire(lease.transaction, None)
        if self.leases.get(lease.nonce) is lease:
            del self.leases[lease.nonce]

    def _renewal_request(self, lease: Lease) -> Request:
        """The same request with the same nonce and the assigned values (RFC 6887 11.2.1)."""
        return Request(lease.opcode, lease.requested_lifetime, self.client_ip, lease.info)

    def _next_send(self, tx: Transaction, now: float) -> float | None:
        if tx.schedule == RENEWAL and tx.lease is not None:  # a renewal always has its lease
            return self._next_renewal(tx.lease, now)
        rand = self._rng.uniform(-RAND, RAND)
        rt = (1 + rand) * IRT if tx.sent == 1 else (2 + rand) * tx.rt  # RFC 6887 8.1.1
        if MRT and rt > MRT:
            rt = (1 + rand) * MRT
        tx.rt = rt
        return now + rt

    def _next_renewal(self, lease: Lease, now: float) -> float | None:
        """RFC 6887 11.2.1: attempt k goes out between 1 - 2^-k and 1 - 2^-k + 2^-(k+2) of the lifetime."""
        lease.attempts += 1
        k = lease.attempts + 1
        low = 1 - 2.0 ** -k
        at = lease.granted_at + lease.lifetime * self._rng.uniform(low, low + 2.0 ** -(k + 2))
        at = max(at, now + MIN_RENEWAL_SPACING)
        return at if at < lease.expires else None

    def _check_epoch(self, epoch: int, now: float) -> int | None:
        """RFC 6887 8.5's validation; returns the previous epoch if this one shows a restart."""
        previous, self.epoch = self.epoch, (epoch, now)
        if previous is None:
            return None
        prev_server, prev_client = previous
        if epoch + 1 < prev_server:  # backwards by more than a second (reordering tolerance)
            return prev_server
        client_delta, server_delta = now - prev_client, epoch - prev_server
        if client_delta + 2 < server_delta - server_delta / 16 or server_delta + 2 < client_delta - client_delta / 16:
            return prev_server
        return None

    def _settle(self, tx: Transaction, response: Response, now: float) -> Event:
        if response.result is not Result.SUCCESS:
            lease = tx.lease
            if tx.purpose == "renew" and lease is not None:
                if error_lifetime(response.result) == LONG_ERROR_LIFETIME:
                    self._drop(lease)  # retrying cannot cure it: the NAT will not keep this lease
                else:
                    retry = now + max(response.lifetime, MIN_RENEWAL_SPACING)
                    lease.renew_at = retry if retry < lease.expires else None
            return self._finish(tx, Refused(tx, response.result, response.lifetime, response))
        return self._finish(tx, Granted(tx, response, self._granted(tx, response, now)))

    def _granted(self, tx: Transaction, response: Response, now: float) -> Lease | None:
        lease = tx.lease
        info = response.info
        if tx.purpose == "release" or response.opcode not in LEASABLE or response.lifetime == 0 or info is None:
            if lease is not None:
                self._drop(lease)
            return lease
        if lease is None:
            lease = Lease(Opcode(response.opcode), info, tx.request.lifetime, response.lifetime, now)
        lease.info, lease.lifetime, lease.granted_at = info, response.lifetime, now
        lease.requested_lifetime = tx.request.lifetime
        lease.alive, lease.attempts, lease.transaction = True, 0, None
        lease.renew_at = now + response.lifetime * self._rng.uniform(1 / 2, 5 / 8)
        self.leases[lease.nonce] = lease
        return lease


def _answers(request: Request, response: Response) -> bool:
    """Does ``response`` answer ``request``? Opcode, nonce and the fields RFC 6887 11.4 / 12.3 name."""
    ask, got = request.info, response.info
    if response.opcode != request.opcode or got is None or ask is None or got.nonce != ask.nonce:
        return False
    if isinstance(ask, PeerInfo) and isinstance(got, PeerInfo):
        return (ask.protocol, ask.internal_port, ask.remote_port, ask.remote_ip) == (
            got.protocol, got.internal_port, got.remote_port, got.remote_ip)
    if isinstance(ask, MapInfo) and isinstance(got, MapInfo):
        return (ask.protocol, ask.internal_port) == (got.protocol, got.internal_port)
    if isinstance(ask, LeaseInfo) and isinstance(got, LeaseInfo):
        return ((ask.protocol, ask.port, ask.foreign_ip) == (got.protocol, got.port, got.foreign_ip)
                and ask.private_gpn in (None, got.private_gpn))
    if isinstance(ask, GpnDefinition) and isinstance(got, GpnDefinition):
        return (ask.protocol, ask.underlying, ask.port) == (got.protocol, got.underlying, got.port)
    if isinstance(ask, ReadInfo) and isinstance(got, ReadInfo):
        return ask.start == got.start
    return False
