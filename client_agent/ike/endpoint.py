"""All IKE SAs behind one UDP port 500: demultiplexing by SPI and the responder's stateless front door.

The endpoint routes each datagram to its session by the SPI this side chose
(SPIr when the I flag says the sender is the original initiator, SPIi
otherwise). A new IKE_SA_INIT request is checked before any state is kept
(section 2.6): under load (``cookie_threshold`` half-open SAs) it must carry a
valid COOKIE; then a proposal must be acceptable (else NO_PROPOSAL_CHOSEN) and
its KE must be in the chosen group (else INVALID_KE_PAYLOAD naming the group,
section 1.2). Only then does a responder session exist.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable

from client_agent.ike import crypto
from client_agent.ike.codec import (
    Header,
    KePayload,
    Malformed,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    decode_message,
    encode_message,
)
from client_agent.ike.config import IkeConfig
from client_agent.ike.events import Event, IkeRekeyed
from client_agent.ike.proposals import choose, ike_suite
from client_agent.ike.registry import ExchangeType, Flag, Notify
from client_agent.ike.session import (
    ZERO_SPI,
    Address,
    IkeSession,
    SpiSource,
    State,
    one_payload,
    packed_ip,
    random_child_spi,
    random_spi,
)

COOKIE_VERSION = 1


class IkeEndpoint:
    """IKE SAs sharing one local address: initiate, receive, time out; events come out tagged by session."""

    def __init__(self, config: IkeConfig | None, local: Address, *, child_spi: SpiSource = random_child_spi,
                 random: Callable[[int], bytes] = os.urandom, cookie_threshold: int = 8) -> None:
        self.config, self.local = config, local
        self.sessions: dict[bytes, IkeSession] = {}
        self.counters: Counter[str] = Counter()
        self.cookie_threshold = cookie_threshold
        self._child_spi, self._random = child_spi, random
        self._secret = random(32)
        self._out: list[tuple[bytes, Address]] = []
        self._half_open: dict[tuple[bytes, Address], IkeSession] = {}

    def initiate(self, config: IkeConfig, remote: Address, now: float, spi: bytes | None = None) -> IkeSession:
        """Start an IKE SA as initiator; ``spi`` is the leased SPIi behind the extensible NAT (FIG. 8 step 801)."""
        spi = spi if spi is not None else random_spi(self._random)
        if spi == ZERO_SPI or spi in self.sessions:
            raise ValueError(f"spi={spi.hex()}: zero or already in use")
        session = IkeSession(config, initiator=True, local=self.local, remote=remote, spi=spi, now=now,
                             child_spi=self._child_spi, random=self._random)
        self.sessions[spi] = session
        session.connect(now)
        return session

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        for session in list(self.sessions.values()):
            out += session.datagrams_to_send()
        return out

    def next_events(self) -> list[tuple[IkeSession, Event]]:
        """Every pending event, with its session; closed sessions are forgotten after their last event.

        A rekeyed IKE SA's successor (section 2.18) joins the sessions under its own SPI."""
        out: list[tuple[IkeSession, Event]] = []
        seen: set[int] = set()
        while any(id(s) not in seen for s in self.sessions.values()):
            for spi, session in list(self.sessions.items()):
                if id(session) in seen:
                    continue
                seen.add(id(session))
                while (event := session.next_event()) is not None:
                    out.append((session, event))
                    if isinstance(event, IkeRekeyed):
                        self.sessions[event.successor.local_spi] = event.successor
                if session.state is State.CLOSED:
                    self._forget(spi, session)
        return out

    def get_timer(self) -> float | None:
        return min((t for s in self.sessions.values() if (t := s.get_timer()) is not None), default=None)

    def handle_timer(self, now: float) -> None:
        for session in list(self.sessions.values()):
            timer = session.get_timer()
            if timer is not None and now >= timer:
                session.handle_timer(now)

    def receive_datagram(self, data: bytes, remote: Address, now: float) -> None:
        """Route one datagram; nothing a peer sends raises out of here."""
        try:
            header, payloads = decode_message(data)
        except Malformed as e:
            self.counters[f"dropped:{e.reason}"] += 1
            return
        if header.exchange == ExchangeType.IKE_SA_INIT and not header.is_response:
            self._on_init_request(data, header, payloads, remote, now)
            return
        session = self.sessions.get(header.spi_r if header.from_initiator else header.spi_i)
        if session is None:
            self.counters["dropped:unknown_spi"] += 1
            return
        session.receive_datagram(data, remote, now)

    # ------------------------------------------------------------ the stateless front door

    def _on_init_request(self, data: bytes, header: Header, payloads: list[Payload], remote: Address,
                         now: float) -> None:
        known = self._half_open.get((header.spi_i, remote))
        if known is not None and known.state is State.INIT_DONE:
            known.resend_init_response()
            return
        if self.config is None or header.spi_r != ZERO_SPI or header.message_id != 0 or not header.from_initiator:
            self.counters["dropped:unexpected_init_request"] += 1
            return
        try:
            self._admit(data, header, payloads, remote, now)
        except Malformed as e:
            self.counters[f"dropped:{e.reason}"] += 1

    def _admit(self, data: bytes, header: Header, payloads: list[Payload], remote: Address, now: float) -> None:
        assert self.config is not None
        sa, ke, nonce = one_payload(payloads, SaPayload), one_payload(payloads, KePayload), one_payload(payloads, NoncePayload)
        if self._needs_cookie() and not self._cookie_ok(payloads, nonce.data, remote, header.spi_i):
            self._reply(header, remote, Notify.COOKIE, crypto.cookie(
                self._secret, COOKIE_VERSION, nonce.data, packed_ip(remote[0]), header.spi_i))
            self.counters["cookie_demanded"] += 1
            return
        chosen = choose(sa.proposals, self.config.ike_proposals)
        if chosen is None:
            self._reply(header, remote, Notify.NO_PROPOSAL_CHOSEN)
            self.counters["no_proposal_chosen"] += 1
            return
        group = ike_suite(chosen).dh
        if ke.group != group:
            self._reply(header, remote, Notify.INVALID_KE_PAYLOAD, group.to_bytes(2, "big"))
            self.counters["invalid_ke_payload"] += 1
            return
        self._start_responder(data, payloads, chosen, ke, remote, now)

    def _start_responder(self, data: bytes, payloads: list[Payload], chosen: Proposal, ke: KePayload,
                         remote: Address, now: float) -> None:
        assert self.config is not None
        spi = random_spi(self._random)
        while spi in self.sessions:
            spi = random_spi(self._random)
        session = IkeSession(self.config, initiator=False, local=self.local, remote=remote, spi=spi, now=now,
                             child_spi=self._child_spi, random=self._random)
        session.accept_init_request(data, payloads, chosen, ke, now)  # may raise Malformed (bad KE value)
        self.sessions[spi] = session
        self._half_open[(session.spi_i, remote)] = session

    def _needs_cookie(self) -> bool:
        """Section 2.6: demand cookies once too many SAs are half-open."""
        return sum(s.state is State.INIT_DONE for s in self.sessions.values()) >= self.cookie_threshold

    def _cookie_ok(self, payloads: list[Payload], ni: bytes, remote: Address, spi_i: bytes) -> bool:
        first = payloads[0] if payloads else None
        if not isinstance(first, NotifyPayload) or first.type != Notify.COOKIE:
            return False
        expected = crypto.cookie(self._secret, COOKIE_VERSION, ni, packed_ip(remote[0]), spi_i)
        if first.data != expected:
            self.counters["bad_cookie"] += 1
            return False
        return True

    def _reply(self, header: Header, remote: Address, notify: Notify, data: bytes = b"") -> None:
        """A stateless IKE_SA_INIT answer carrying one notify, SPIr zero (sections 1.2 and 2.6)."""
        reply = Header(header.spi_i, ZERO_SPI, 0, ExchangeType.IKE_SA_INIT, Flag.RESPONSE, 0)
        self._out.append((encode_message(reply, [NotifyPayload(notify, data)]), remote))

    def _forget(self, spi: bytes, session: IkeSession) -> None:
        """Drop a closed session; its last datagrams (the answer to the Delete that closed it) still go out."""
        self._out += session.datagrams_to_send()
        self.sessions.pop(spi, None)
        self._half_open.pop((session.spi_i, session.remote), None)
        for name, count in session.counters.items():
            self.counters[name] += count
        session.counters.clear()
