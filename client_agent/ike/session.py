"""One IKE SA as a sans-IO state machine (RFC 7296): bytes and ``now`` in; datagrams, a timer and events out.

Initiator: IKE_SA_INIT (answering COOKIE and INVALID_KE_PAYLOAD, sections 2.6
and 1.2), then IKE_AUTH with a PSK (section 2.15) carrying the first CHILD_SA.
Responder: the same, answered (the stateless part, cookies and group
corrections, lives in :mod:`client_agent.ike.endpoint`). Both: INFORMATIONAL
(Delete, liveness, section 1.4), CREATE_CHILD_SA rekeying of CHILD_SAs
(section 1.3.3, old SA deleted by the rekey's initiator, section 2.8), with
PFS when the CHILD_SA proposals name a DH group (sections 1.3.1, 2.17; the
rules in :mod:`client_agent.ike.pfs`),
retransmission with backoff (section 2.1) and a window of one (section 2.3).

Every message that is malformed, unauthenticated, unexpected or outside the
window is dropped and counted in :attr:`IkeSession.counters` under a reason;
no peer input raises out of :meth:`IkeSession.receive_datagram`.
"""

from __future__ import annotations

import hmac as std_hmac
import ipaddress
import os
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from client_agent.ike import crypto
from client_agent.ike.codec import (
    AuthPayload,
    DeletePayload,
    Header,
    IdPayload,
    KePayload,
    Malformed,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    SkPayload,
    TsPayload,
    decode_chain,
    decode_message,
    encode_chain,
    encode_message,
)
from client_agent.ike.config import IkeConfig, describe_id
from client_agent.ike.events import (
    ChildDeleted,
    ChildEstablished,
    ChildFailed,
    ChildSa,
    Event,
    IkeClosed,
    IkeEstablished,
    IkeRekeyed,
    SpiReleased,
)
from client_agent.ike.pfs import (
    dh_group,
    initiator_problem,
    offered_groups,
    prefer_group,
    responder_refusal,
    without_dh,
)
from client_agent.ike.proposals import accepted_is_offered, child_suite, choose, ike_suite
from client_agent.ike.registry import (
    ERROR_NOTIFY_LIMIT,
    HEADER_LEN,
    IKE_PORT,
    NATT_PORT,
    AuthMethod,
    ExchangeType,
    Flag,
    Notify,
    PayloadType,
    ProtocolId,
    TransformType,
)
from client_agent.ike.selectors import covered, narrow

Address = tuple[str, int]
_P = TypeVar("_P")
SpiSource = Callable[[ProtocolId], int]
NONCE_LEN = 32
MAX_INIT_RETRIES = 3  # COOKIE and INVALID_KE_PAYLOAD round trips before giving up
IKE_SPI_WAIT = 1.0  # seconds between tries of an IKE SA rekey whose new SPI (a lease) is not held yet
ZERO_SPI = bytes(8)


class State(Enum):
    IDLE = "idle"
    INIT_SENT = "init_sent"
    AUTH_SENT = "auth_sent"
    INIT_DONE = "init_done"  # responder: half-open
    ESTABLISHED = "established"
    CLOSED = "closed"


@dataclass
class _Pending:
    """Our one outstanding request (window of 1, section 2.3)."""

    message_id: int
    data: bytes
    handler: Callable[[Header, list[Payload], float], None]
    sent: int
    deadline: float


def random_spi(random: Callable[[int], bytes] = os.urandom) -> bytes:
    """A non-zero 8-byte IKE SPI (section 3.1: zero is "not yet known")."""
    while True:
        spi = random(8)
        if spi != ZERO_SPI:
            return spi


def random_child_spi(_: ProtocolId) -> int:
    """An ESP/AH SPI outside the reserved 0-255 (RFC 4303 section 2.1), when nothing leases them."""
    return 256 + int.from_bytes(os.urandom(4), "big") % (2**32 - 256)


class IkeSession:
    """One IKE SA with one peer. Make initiators with :meth:`initiate`; the endpoint makes responders."""

    def __init__(self, config: IkeConfig, *, initiator: bool, local: Address, remote: Address, spi: bytes,
                 now: float, child_spi: SpiSource = random_child_spi,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.config, self.initiator, self.local, self.remote = config, initiator, local, remote
        self.spi_i, self.spi_r = (spi, ZERO_SPI) if initiator else (ZERO_SPI, spi)
        self.state = State.IDLE
        self.counters: Counter[str] = Counter()
        self.children: dict[int, ChildSa] = {}
        self.nat_local = self.nat_peer = False
        self.udp_encap = False  # section 2.23: a NAT seen (or encapsulation forced): IKE on 4500, ESP in UDP
        self.suite: crypto.IkeSuite | None = None
        self.keys: crypto.IkeKeys | None = None
        self._child_spi, self._random = child_spi, random
        self._created = self._last_heard = now
        self._out: list[tuple[bytes, Address]] = []
        self._events: deque[Event] = deque()
        self._my_mid = 0
        self._peer_mid = 0
        self._pending: _Pending | None = None
        self._queue: deque[Callable[[float], None]] = deque()
        self._last_response: tuple[int, bytes] | None = None
        self._init_retries = 0
        self._ke: crypto.KeyExchange | None = None
        self._ni = self._nr = b""
        self._message1 = self._message2 = b""
        self._auth_child_spis: dict[int, int] = {}
        self._cookie: bytes | None = None
        self._ike_rekey_at: float | None = None
        self._successor: IkeSession | None = None
        self._rekey_nonce: bytes | None = None  # our Ni while our IKE SA rekey is in flight (section 2.8.2)
        self._rival: tuple[IkeSession, bytes, bytes] | None = None  # the peer's colliding new IKE SA, its Ni, Nr
        self._redundant = False  # a new IKE SA that lost a rekey collision (section 2.8.2)
        self._rekeys_waiting: set[int] = set()  # CHILD_SAs whose rekey waits in the queue (window of one)
        self._child_rekey_nonces: dict[int, bytes] = {}  # old inbound SPI -> our Ni, while our rekey is in flight
        self._child_rivals: dict[int, tuple[int, bytes, bytes]] = {}  # old SPI -> the peer's new child, Ni, Nr
        # Our SPI for a rekeyed IKE SA; behind the extensible NAT a leased one (FIG. 8 step 801), None while the
        # lease is not held yet (the rekey then waits, section 2.18 leaves the old SA usable meanwhile).
        self.ike_spi_source: Callable[[], bytes | None] = lambda: random_spi(self._random)
        self._send: crypto.SkCipher | None = None
        self._recv: crypto.SkCipher | None = None

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    # ------------------------------------------------------------ shell interface

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The earliest moment :meth:`handle_timer` has work to do."""
        if self.state is State.CLOSED:
            return None
        deadlines = [c.rekey_at for c in self.children.values() if c.rekey_at is not None]
        if self._pending is not None:
            deadlines.append(self._pending.deadline)
        if self.state is State.INIT_DONE:
            deadlines.append(self._created + self.config.half_open_timeout)
        if self.state is State.ESTABLISHED and self.config.liveness and self._pending is None:
            deadlines.append(self._last_heard + self.config.liveness)
        if self._ike_rekey_at is not None and self.state is State.ESTABLISHED:
            deadlines.append(self._ike_rekey_at)
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        if self.state is State.CLOSED:
            return
        if self._pending is not None and now >= self._pending.deadline:
            self._retransmit(now)
        if self.state is State.INIT_DONE and now >= self._created + self.config.half_open_timeout:
            self._close("half_open_timeout")
            return
        for child in list(self.children.values()):
            if child.rekey_at is not None and now >= child.rekey_at:
                child.rekey_at = None
                self.rekey_child(child.inbound_spi, now)
        if (self.state is State.ESTABLISHED and self.config.liveness and self._pending is None
                and now >= self._last_heard + self.config.liveness):
            self.check_liveness(now)
        if self._ike_rekey_at is not None and now >= self._ike_rekey_at and self.state is State.ESTABLISHED:
            self._ike_rekey_at = None
            self.rekey_ike(now)

    def receive_datagram(self, data: bytes, remote: Address, now: float) -> None:
        """Process one datagram from the peer; anything wrong is dropped and counted, never raised."""
        if self.state is State.CLOSED:
            self._drop("closed")
            return
        try:
            header, payloads = decode_message(data)
        except Malformed as e:
            self._drop(e.reason)
            return
        try:
            self._dispatch(data, header, payloads, remote, now)
        except Malformed as e:
            self._drop(e.reason)

    # ------------------------------------------------------------ starting and stopping

    def connect(self, now: float) -> None:
        """Initiator: send IKE_SA_INIT (section 1.2)."""
        first = self.config.ike_proposals[0].of_type(TransformType.DH)[0].id
        self._ke = crypto.KEY_EXCHANGES[first]()
        self._ni = self._random(NONCE_LEN)
        self.state = State.INIT_SENT
        self._send_init(now, cookie=None)

    def close(self, now: float) -> None:
        """Delete the IKE SA (section 1.4.1); the peer's answer (or its absence) ends it."""
        if self.state is State.ESTABLISHED:
            self._request(ExchangeType.INFORMATIONAL, [DeletePayload(ProtocolId.IKE)],
                          lambda h, p, t: self._close("deleted"), now)
        else:
            self._close("closed_before_established")

    def check_liveness(self, now: float) -> None:
        """An empty INFORMATIONAL request (section 1.4): the answer proves the peer is alive."""
        self._request(ExchangeType.INFORMATIONAL, [], lambda h, p, t: None, now)

    def delete_child(self, inbound_spi: int, now: float) -> None:
        """Delete one CHILD_SA pair by our inbound SPI (section 1.4.1)."""
        child = self.children.get(inbound_spi)
        if child is not None:
            payload = DeletePayload(child.protocol, (inbound_spi.to_bytes(4, "big"),))
            self._request(ExchangeType.INFORMATIONAL, [payload], lambda h, p, t: self._forget_child(child), now)

    def rekey_child(self, inbound_spi: int, now: float) -> None:
        """CREATE_CHILD_SA with REKEY_SA (section 1.3.3); the old pair is deleted once the new one is up."""
        old = self.children.get(inbound_spi)
        if old is None or self.state is not State.ESTABLISHED:
            return
        self._rekeys_waiting.add(inbound_spi)
        self._queue_or_run(lambda t: self._send_rekey(old, t), now)

    # ------------------------------------------------------------ receiving

    def _dispatch(self, data: bytes, header: Header, payloads: list[Payload], remote: Address, now: float) -> None:
        if header.from_initiator == self.initiator:
            raise Malformed("bad_initiator_flag")
        if header.spi_i != self.spi_i or (header.spi_r != self.spi_r and self.spi_r != ZERO_SPI):
            raise Malformed("spi_mismatch")
        if header.exchange == ExchangeType.IKE_SA_INIT:
            self._on_init(data, header, payloads, now)
            return
        if header.spi_r != self.spi_r or self._recv is None:
            raise Malformed("no_ike_sa_keys")
        inner = self._open(data, payloads)
        self._last_heard = now
        self._follow(remote)
        if header.is_response:
            self._on_response(header, inner, now)
        else:
            self._on_request(header, inner, remote, now)

    def _follow(self, remote: Address) -> None:
        """Section 2.23: behind a NAT, an authenticated message from a new address moves the peer there
        (strongSwan's libipsec fakes a NAT and moves IKE to port 4500)."""
        if remote != self.remote and (self.nat_local or self.nat_peer):
            self.counters["peer_address_updated"] += 1
            self.remote = remote

    def _open(self, data: bytes, payloads: list[Payload]) -> list[Payload]:
        """The inner payloads of the SK payload, authenticated first (section 3.14)."""
        if len(payloads) != 1 or not isinstance(payloads[0], SkPayload):
            raise Malformed("unprotected_payloads")
        sk = payloads[0]
        assert self._recv is not None
        inner = self._recv.open(data, len(data) - len(sk.body))
        return decode_chain(sk.first_inner, inner)

    def _on_response(self, header: Header, payloads: list[Payload], now: float) -> None:
        pending = self._pending
        if pending is None or header.message_id != pending.message_id:
            raise Malformed("unexpected_response", f"message id {header.message_id}")
        self._pending = None
        pending.handler(header, payloads, now)
        self._run_queue(now)

    def _on_request(self, header: Header, payloads: list[Payload], remote: Address, now: float) -> None:
        if header.message_id == self._peer_mid - 1 and self._last_response is not None:
            self.counters["retransmitted_request"] += 1
            self._out.append((self._last_response[1], remote))
            return
        if header.message_id != self._peer_mid:
            raise Malformed("out_of_window", f"message id {header.message_id}, expected {self._peer_mid}")
        handler = {ExchangeType.IKE_AUTH: self._on_auth_request,
                   ExchangeType.INFORMATIONAL: self._on_informational_request,
                   ExchangeType.CREATE_CHILD_SA: self._on_create_child_request}.get(ExchangeType(header.exchange))
        if handler is None or (self.state is not State.ESTABLISHED and header.exchange != ExchangeType.IKE_AUTH):
            raise Malformed("unexpected_exchange", ExchangeType(header.exchange).name)
        response = handler(payloads, now)
        self._respond(header, response, remote)

    def _respond(self, header: Header, payloads: list[Payload], remote: Address) -> None:
        """Section 2.11: a response goes to the address and port the request came from."""
        data = self._seal(ExchangeType(header.exchange), header.message_id, True, payloads)
        self._last_response = (header.message_id, data)
        self._peer_mid += 1
        self._out.append((data, remote))

    # ------------------------------------------------------------ IKE_SA_INIT

    def _send_init(self, now: float, cookie: bytes | None) -> None:
        assert self._ke is not None
        payloads: list[Payload] = [NotifyPayload(Notify.COOKIE, cookie)] if cookie else []
        payloads += [SaPayload(self.config.ike_proposals), KePayload(self._ke_group(), self._ke.public),
                     NoncePayload(self._ni), *self._natd_payloads(ZERO_SPI)]
        self._message1 = encode_message(Header(self.spi_i, ZERO_SPI, 0, ExchangeType.IKE_SA_INIT,
                                               Flag.INITIATOR, 0), payloads)
        self._pending = None
        self._transmit(0, self._message1, self._on_init_response, now)

    def _ke_group(self) -> int:
        group = group_of(self._ke)
        if group is None:
            raise AssertionError("unknown key exchange")
        return group

    def _natd_payloads(self, spi_r: bytes) -> list[Payload]:
        """NAT_DETECTION_SOURCE_IP over ``natd_source`` (the global address behind the extensible NAT)."""
        if not self.config.natd:
            return []
        source = self.config.natd_source or self.local
        # Forcing encapsulation: a source hash that matches nothing makes the peer see a NAT (as strongSwan's encap=yes).
        source_hash = self._random(20) if self.config.force_encap else crypto.natd_hash(
            self.spi_i, spi_r, packed_ip(source[0]), source[1])
        return [
            NotifyPayload(Notify.NAT_DETECTION_SOURCE_IP, source_hash),
            NotifyPayload(Notify.NAT_DETECTION_DESTINATION_IP,
                          crypto.natd_hash(self.spi_i, spi_r, packed_ip(self.remote[0]), self.remote[1])),
        ]

    def _check_natd(self, payloads: list[Payload], spi_r: bytes, observed_source: Address) -> None:
        """Section 2.23: compare the peer's NAT-D hashes with what we see and what we claim to be."""
        sources = _notify_data(payloads, Notify.NAT_DETECTION_SOURCE_IP)
        destinations = _notify_data(payloads, Notify.NAT_DETECTION_DESTINATION_IP)
        if not sources or not destinations:
            return
        seen = crypto.natd_hash(self.spi_i, spi_r, packed_ip(observed_source[0]), observed_source[1])
        me = self.config.natd_source or self.local
        claimed = crypto.natd_hash(self.spi_i, spi_r, packed_ip(me[0]), me[1])
        self.nat_peer = seen not in sources
        self.nat_local = claimed not in destinations

    def _on_init(self, data: bytes, header: Header, payloads: list[Payload], now: float) -> None:
        if not header.is_response:
            raise Malformed("unexpected_init_request")  # new SAs are the endpoint's business
        pending = self._pending
        if self.state is not State.INIT_SENT or pending is None or header.message_id != 0:
            raise Malformed("unexpected_response", "IKE_SA_INIT")
        self._pending = None
        self._message2 = data
        self._on_init_response(header, payloads, now)

    def _on_init_response(self, header: Header, payloads: list[Payload], now: float) -> None:
        notifies = {p.type: p for p in payloads if isinstance(p, NotifyPayload)}
        if Notify.COOKIE in notifies or Notify.INVALID_KE_PAYLOAD in notifies:
            self._retry_init(notifies, now)
            return
        errors = [t for t in notifies if t < ERROR_NOTIFY_LIMIT]
        if errors:
            self._close(f"peer_refused:{_notify_name(errors[0])}")
            return
        try:
            self._accept_init(header, payloads)
        except Malformed as e:
            self._close(f"bad_init_response:{e.reason}")
            return
        self._send_auth(now)

    def _retry_init(self, notifies: dict[int, NotifyPayload], now: float) -> None:
        self._init_retries += 1
        if self._init_retries > MAX_INIT_RETRIES:
            self._close("too_many_init_retries")
            return
        cookie = notifies.get(Notify.COOKIE)
        invalid_ke = notifies.get(Notify.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            self.counters["invalid_ke_payload"] += 1
            group = int.from_bytes(invalid_ke.data[:2], "big") if len(invalid_ke.data) == 2 else -1
            offered = {t.id for p in self.config.ike_proposals for t in p.of_type(TransformType.DH)}
            if group not in offered or group not in crypto.KEY_EXCHANGES:
                self._close(f"invalid_ke_group:{group}")
                return
            self._ke = crypto.KEY_EXCHANGES[group]()
        if cookie is not None:
            self.counters["cookie_requested"] += 1
            self._cookie = cookie.data
        self._send_init(now, self._cookie)

    def _accept_init(self, header: Header, payloads: list[Payload]) -> None:
        sa, ke, nonce = one_payload(payloads, SaPayload), one_payload(payloads, KePayload), one_payload(payloads, NoncePayload)
        if len(sa.proposals) != 1 or not accepted_is_offered(sa.proposals[0], self.config.ike_proposals):
            raise Malformed("proposal_not_offered")
        if header.spi_r == ZERO_SPI:
            raise Malformed("zero_responder_spi")
        suite = ike_suite(sa.proposals[0])
        if ke.group != suite.dh or ke.group != self._ke_group():
            raise Malformed("ke_group_mismatch", f"KE {ke.group}, chosen {suite.dh}")
        assert self._ke is not None
        shared = self._ke.shared(ke.data)
        self.spi_r, self._nr = header.spi_r, nonce.data
        self._install_keys(suite, crypto.skeyseed(suite.prf, self._ni, self._nr, shared))
        self._check_natd(payloads, self.spi_r, self.remote)
        self._float()

    def _float(self) -> None:
        """Section 2.23: with a NAT on the path (or encapsulation forced) every CHILD_SA is UDP-encapsulated,
        and the initiator moves IKE from port 500 to 4500 before IKE_AUTH; the responder follows it there
        (:meth:`_follow`), wherever the NAT maps that new flow."""
        if not (self.nat_local or self.nat_peer or self.config.force_encap):
            return
        self.udp_encap = True
        if self.initiator and self.remote[1] == IKE_PORT:
            self.counters["floated_to_natt"] += 1
            self.local, self.remote = (self.local[0], NATT_PORT), (self.remote[0], NATT_PORT)

    def _install_keys(self, suite: crypto.IkeSuite, seed: bytes) -> None:
        self.suite = suite
        self.keys = keys = crypto.derive_ike_keys(suite, seed, self._ni, self._nr, self.spi_i, self.spi_r)
        mine = (keys.sk_ei, keys.sk_ai) if self.initiator else (keys.sk_er, keys.sk_ar)
        theirs = (keys.sk_er, keys.sk_ar) if self.initiator else (keys.sk_ei, keys.sk_ai)
        self._send = crypto.SkCipher(suite, *mine, random=self._random)
        self._recv = crypto.SkCipher(suite, *theirs, random=self._random)

    def accept_init_request(self, message: bytes, payloads: list[Payload], chosen: Proposal,
                            ke: KePayload, now: float) -> None:
        """Responder: answer an IKE_SA_INIT the endpoint has already checked (proposal chosen, group right)."""
        nonce = one_payload(payloads, NoncePayload)
        self.spi_i = message[:8]
        suite = ike_suite(chosen)
        self._ke = crypto.KEY_EXCHANGES[suite.dh]()
        shared = self._ke.shared(ke.data)
        self._ni, self._nr, self._message1 = nonce.data, self._random(NONCE_LEN), message
        self._check_natd(payloads, ZERO_SPI, self.remote)
        self._float()
        response = [SaPayload((chosen,)), KePayload(suite.dh, self._ke.public), NoncePayload(self._nr),
                    *self._natd_payloads_responder()]
        self._message2 = encode_message(Header(self.spi_i, self.spi_r, 0, ExchangeType.IKE_SA_INIT,
                                               Flag.RESPONSE, 0), response)
        self._install_keys(suite, crypto.skeyseed(suite.prf, self._ni, self._nr, shared))
        self._peer_mid, self._last_response = 1, (0, self._message2)
        self.state = State.INIT_DONE
        self._out.append((self._message2, self.remote))

    def _natd_payloads_responder(self) -> list[Payload]:
        """The responder's NAT-D (section 2.23), over its own address and the source it saw."""
        if not self.config.natd:
            return []
        source = self.config.natd_source or self.local
        return [
            NotifyPayload(Notify.NAT_DETECTION_SOURCE_IP,
                          crypto.natd_hash(self.spi_i, self.spi_r, packed_ip(source[0]), source[1])),
            NotifyPayload(Notify.NAT_DETECTION_DESTINATION_IP,
                          crypto.natd_hash(self.spi_i, self.spi_r, packed_ip(self.remote[0]), self.remote[1])),
        ]

    def resend_init_response(self) -> None:
        """The peer retransmitted its IKE_SA_INIT: send the same answer again (section 2.1)."""
        self.counters["retransmitted_request"] += 1
        self._out.append((self._message2, self.remote))

    # ------------------------------------------------------------ IKE_AUTH

    def _auth_value(self, initiator_side: bool, id_body: bytes) -> bytes:
        """Section 2.15: the initiator signs message 1 | Nr | prf(SK_pi, IDi'); the responder message 2 | Ni | ..."""
        assert self.suite is not None and self.keys is not None
        if initiator_side:
            return crypto.psk_auth(self.suite.prf, self.config.psk, self._message1, self._nr, self.keys.sk_pi, id_body)
        return crypto.psk_auth(self.suite.prf, self.config.psk, self._message2, self._ni, self.keys.sk_pr, id_body)

    def _send_auth(self, now: float) -> None:
        cfg = self.config
        payloads: list[Payload] = [cfg.local_id.payload(True)]
        if cfg.remote_id is not None:
            payloads.append(cfg.remote_id.payload(False))
        payloads.append(AuthPayload(AuthMethod.SHARED_KEY_MIC, self._auth_value(True, cfg.local_id.body)))
        payloads += self._child_request_payloads(ExchangeType.IKE_AUTH)
        self.state = State.AUTH_SENT
        self._my_mid = 1
        self._request(ExchangeType.IKE_AUTH, payloads, self._on_auth_response, now)

    def _child_request_payloads(self, exchange: ExchangeType, nonce: bytes = b"", rekey: ChildSa | None = None,
                                ke: KePayload | None = None, same_spis: bool = False) -> list[Payload]:
        """[N(REKEY_SA)], [N(USE_TRANSPORT_MODE)], SA (our inbound SPIs), [Ni], [KEi], TSi, TSr (sections 1.2,
        1.3); IKE_AUTH's proposals lose their DH transforms (no KE there); ``same_spis`` after INVALID_KE_PAYLOAD."""
        cfg = self.config
        if not same_spis:
            self._auth_child_spis = {p: self._child_spi(ProtocolId(p))
                                     for p in {q.protocol for q in cfg.child_proposals}}
        offered = self._offered_children(exchange)
        proposals = tuple(Proposal(p.number, p.protocol, self._auth_child_spis[p.protocol].to_bytes(4, "big"),
                                   p.transforms) for p in offered)
        out: list[Payload] = []
        if rekey is not None:
            out.append(NotifyPayload(Notify.REKEY_SA, b"", rekey.protocol, rekey.inbound_spi.to_bytes(4, "big")))
        if cfg.mode == "transport":
            out.append(NotifyPayload(Notify.USE_TRANSPORT_MODE))
        out.append(SaPayload(proposals))
        out += [NoncePayload(nonce)] if nonce else []
        out += [ke] if ke is not None else []
        local = rekey.local_ts if rekey else cfg.local_ts
        remote = rekey.remote_ts if rekey else cfg.remote_ts
        return [*out, TsPayload(True, local), TsPayload(False, remote)]

    def _offered_children(self, exchange: ExchangeType) -> tuple[Proposal, ...]:
        """Our CHILD_SA proposals for ``exchange``: IKE_AUTH has no KE, so no DH transform (section 1.2)."""
        proposals = self.config.child_proposals
        return without_dh(proposals) if exchange == ExchangeType.IKE_AUTH else proposals

    def _on_auth_response(self, header: Header, payloads: list[Payload], now: float) -> None:
        if Notify.AUTHENTICATION_FAILED in _notify_types(payloads):
            self._close("peer_refused:AUTHENTICATION_FAILED")
            return
        try:
            idr, auth = _id(payloads, initiator=False), one_payload(payloads, AuthPayload)
            self._verify_peer(idr, auth, initiator_side=False)
        except Malformed as e:
            self._close(f"authentication_failed:{e.reason}")
            return
        self._established(idr, now)
        self._finish_child_initiator(payloads, self._ni, self._nr, None, None, now)

    def _verify_peer(self, peer_id: IdPayload, auth: AuthPayload, initiator_side: bool) -> None:
        if peer_id.initiator != initiator_side:
            raise Malformed("wrong_id_payload")
        if self.config.remote_id is not None and not self.config.remote_id.matches(peer_id):
            raise Malformed("identity_mismatch", describe_id(peer_id))
        if auth.method != AuthMethod.SHARED_KEY_MIC:
            raise Malformed("unsupported_auth_method", str(auth.method))
        body = bytes([peer_id.id_type, 0, 0, 0]) + peer_id.data
        if not std_hmac.compare_digest(auth.data, self._auth_value(initiator_side, body)):
            raise Malformed("bad_auth")

    def _established(self, peer_id: IdPayload, now: float | None = None) -> None:
        assert self.suite is not None and self.keys is not None
        self.state = State.ESTABLISHED
        self.peer_id = peer_id
        if self.initiator and self.config.ike_rekey and now is not None:
            self._ike_rekey_at = now + self.config.ike_rekey
        self._events.append(IkeEstablished(self.spi_i, self.spi_r, self.suite, self.keys, describe_id(peer_id),
                                           self.nat_local, self.nat_peer))

    def _on_auth_request(self, payloads: list[Payload], now: float) -> list[Payload]:
        if self.state is not State.INIT_DONE:
            raise Malformed("unexpected_exchange", "IKE_AUTH")
        try:
            idi, auth = _id(payloads, initiator=True), one_payload(payloads, AuthPayload)
            self._verify_peer(idi, auth, initiator_side=True)
            idr = [p for p in payloads if isinstance(p, IdPayload) and not p.initiator]
            if idr and not self.config.local_id.matches(idr[0]):
                raise Malformed("identity_mismatch", f"IDr {describe_id(idr[0])}")
        except Malformed as e:
            self.counters[f"auth_refused:{e.reason}"] += 1
            self.state = State.CLOSED
            self._events.append(IkeClosed(f"authentication_failed:{e.reason}"))
            return [NotifyPayload(Notify.AUTHENTICATION_FAILED)]
        self._established(idi, now)
        cfg = self.config
        response: list[Payload] = [cfg.local_id.payload(False),
                                   AuthPayload(AuthMethod.SHARED_KEY_MIC, self._auth_value(False, cfg.local_id.body))]
        return response + self._respond_child(payloads, self._ni, self._nr, None, now)

    # ------------------------------------------------------------ CHILD_SAs

    def _respond_child(self, payloads: list[Payload], ni: bytes, nr: bytes, old: ChildSa | None,
                       now: float, nonce_out: bytes = b"") -> list[Payload]:
        """Choose, narrow (section 2.9) and key a CHILD_SA the peer asked for; errors become notifies.
        ``nonce_out`` marks CREATE_CHILD_SA, where a KE payload brings PFS (section 1.3.1)."""
        exchange = ExchangeType.CREATE_CHILD_SA if nonce_out else ExchangeType.IKE_AUTH
        try:
            sa, tsi, tsr = one_payload(payloads, SaPayload), _ts(payloads, True), _ts(payloads, False)
            ke = _at_most_one(payloads, KePayload)
        except Malformed as e:
            return self._refuse_child(f"request:{e.reason}", Notify.INVALID_SYNTAX)
        acceptable = self._encapsulable(self._offered_children(exchange))
        chosen = choose(prefer_group(sa.proposals, ke.group if ke else None), acceptable)
        transport = Notify.USE_TRANSPORT_MODE in _notify_types(payloads)
        if chosen is None or len(chosen.spi) != 4 or (self.config.mode == "transport") != transport:
            return self._refuse_child("NO_PROPOSAL_CHOSEN", Notify.NO_PROPOSAL_CHOSEN)
        remote_ts, local_ts = narrow(tsi.selectors, self.config.remote_ts), narrow(tsr.selectors, self.config.local_ts)
        if not remote_ts or not local_ts:
            return self._refuse_child("TS_UNACCEPTABLE", Notify.TS_UNACCEPTABLE)
        refusal = responder_refusal(chosen, ke, acceptable)
        if refusal is not None:
            return self._refuse_child(refusal[2], refusal[0], refusal[1])
        try:
            mine, shared = _pfs_answer(chosen, ke)
        except Malformed as e:  # a KE value of the wrong length or off the curve (section 3.4)
            return self._refuse_child(e.reason, Notify.INVALID_SYNTAX)
        inbound = self._child_spi(ProtocolId(chosen.protocol))
        child = self._make_child(chosen, inbound, int.from_bytes(chosen.spi, "big"), ni, nr, shared,
                                 remote_ts, local_ts, exchange_initiator=False, now=now)
        self._add_child(child, old)
        reply = Proposal(chosen.number, chosen.protocol, inbound.to_bytes(4, "big"), chosen.transforms)
        out: list[Payload] = [NotifyPayload(Notify.USE_TRANSPORT_MODE)] if transport else []
        out.append(SaPayload((reply,)))
        out += [NoncePayload(nonce_out)] if nonce_out else []
        out += [mine] if mine is not None else []
        return [*out, TsPayload(True, remote_ts), TsPayload(False, local_ts)]

    def _refuse_child(self, reason: str, notify: Notify, data: bytes = b"") -> list[Payload]:
        """A refused CHILD_SA request: counted, reported, answered with one error notify."""
        self.counters[f"refused_child_sa:{reason}"] += 1
        self._events.append(ChildFailed(reason))
        return [NotifyPayload(notify, data)]

    def _encapsulable(self, offers: tuple[Proposal, ...]) -> tuple[Proposal, ...]:
        """RFC 3948 carries ESP only (AH's ICV covers the addresses a NAT rewrites): behind a NAT, never AH."""
        return tuple(p for p in offers if not (self.udp_encap and p.protocol == ProtocolId.AH))

    def _finish_child_initiator(self, payloads: list[Payload], ni: bytes, nr: bytes, pfs: crypto.KeyExchange | None,
                                old: ChildSa | None, now: float) -> None:
        """Accept the responder's CHILD_SA answer if it is one we proposed (with the PFS we asked for, KEYMAT
        from its g^ir, section 2.17); otherwise release our SPIs. ``old`` None: the IKE_AUTH child."""
        offered = self._auth_child_spis
        try:
            chosen = self._check_child_answer(payloads)
            shared = self._pfs_shared(chosen, payloads, pfs, old is None)
        except Malformed as e:
            self._release(offered)
            self._events.append(ChildFailed(e.reason))
            if old is not None:
                old.rekey_at = None
            return
        inbound = offered.pop(chosen.protocol)
        self._release(offered)
        child = self._make_child(chosen, inbound, int.from_bytes(chosen.spi, "big"), ni, nr, shared,
                                 _ts(payloads, True).selectors, _ts(payloads, False).selectors,
                                 exchange_initiator=True, now=now)
        self._add_child(child, old)
        if old is not None:
            self._settle_child_rekey(old, child, ni, nr, now)
            self.delete_child(old.inbound_spi, now)

    def _settle_child_rekey(self, old: ChildSa, mine: ChildSa, ni: bytes, nr: bytes, now: float) -> None:
        """Section 2.8.1: if the peer rekeyed ``old`` at the same time, the new pair created with the lowest of
        the four nonces is redundant and deleted by its creator (both peers see the same nonces)."""
        rival = self._child_rivals.pop(old.inbound_spi, None)
        if rival is None:
            return
        if sorted((ni, nr)) < sorted(rival[1:]):
            self.counters["child_rekey_collision_lost"] += 1
            self.delete_child(mine.inbound_spi, now)
        else:
            self.counters["child_rekey_collision_won"] += 1

    def _pfs_shared(self, chosen: Proposal, payloads: list[Payload], pfs: crypto.KeyExchange | None,
                    ike_auth: bool) -> bytes:
        """g^ir of the answer's KEr, b"" without PFS; a dropped group, another group or a bad KEr raise."""
        offered = self._offered_children(ExchangeType.IKE_AUTH if ike_auth else ExchangeType.CREATE_CHILD_SA)
        ke = _at_most_one(payloads, KePayload)
        problem = initiator_problem(chosen, offered, group_of(pfs), ke)
        if problem is not None:
            raise Malformed(problem)
        return pfs.shared(ke.data) if pfs is not None and ke is not None else b""

    def _check_child_answer(self, payloads: list[Payload]) -> Proposal:
        errors = [t for t in _notify_types(payloads) if t < ERROR_NOTIFY_LIMIT]
        if errors:
            raise Malformed(_notify_name(errors[0]))
        sa = one_payload(payloads, SaPayload)
        chosen = sa.proposals[0] if len(sa.proposals) == 1 else None
        if chosen is None or len(chosen.spi) != 4 or not accepted_is_offered(chosen, self.config.child_proposals):
            raise Malformed("child_proposal_not_offered")
        transport = Notify.USE_TRANSPORT_MODE in _notify_types(payloads)
        if transport != (self.config.mode == "transport"):
            raise Malformed("mode_mismatch")
        tsi, tsr = _ts(payloads, True), _ts(payloads, False)
        if not covered(tsi.selectors, self.config.local_ts) or not covered(tsr.selectors, self.config.remote_ts):
            raise Malformed("TS_UNACCEPTABLE")
        return chosen

    def _make_child(self, chosen: Proposal, inbound: int, outbound: int, ni: bytes, nr: bytes, shared: bytes,
                    ts_initiator: tuple, ts_responder: tuple, exchange_initiator: bool, now: float) -> ChildSa:
        """Section 2.17: KEYMAT = prf+(SK_d, [g^ir |] Ni | Nr); initiator-to-responder keys first."""
        assert self.suite is not None and self.keys is not None
        suite = child_suite(chosen)
        e, a = suite.encr_keymat_len, suite.integ_key_len
        keymat = crypto.child_keymat(self.suite.prf, self.keys.sk_d, ni, nr, 2 * (e + a), shared)
        i_to_r = (keymat[:e], keymat[e: e + a])
        r_to_i = (keymat[e + a: 2 * e + a], keymat[2 * e + a:])
        into, out = (r_to_i, i_to_r) if exchange_initiator else (i_to_r, r_to_i)
        local, remote = (ts_initiator, ts_responder) if exchange_initiator else (ts_responder, ts_initiator)
        mode = self.config.mode
        # Only the IKE SA's original initiator schedules rekeys, so the two sides never collide (section 2.8.1).
        rekey_at = now + self.config.child_rekey if self.config.child_rekey else None
        return ChildSa(ProtocolId(chosen.protocol), mode, inbound, outbound, suite, into[0], into[1], out[0], out[1],
                       tuple(local), tuple(remote), now, rekey_at if self.initiator else None, self.udp_encap)

    def _add_child(self, child: ChildSa, old: ChildSa | None) -> None:
        self.children[child.inbound_spi] = child
        self._events.append(ChildEstablished(child, old))

    def _release(self, spis: dict[int, int]) -> None:
        for protocol, spi in spis.items():
            self._events.append(SpiReleased(ProtocolId(protocol), spi))
        spis.clear()

    def _forget_child(self, child: ChildSa) -> None:
        if self.children.pop(child.inbound_spi, None) is not None:
            self._events.append(ChildDeleted(child))
            self._events.append(SpiReleased(child.protocol, child.inbound_spi))

    def _send_rekey(self, old: ChildSa, now: float, group: int | None = None, attempt: int = 0) -> None:
        """CREATE_CHILD_SA {[N(REKEY_SA)], SA, Ni, [KEi], TSi, TSr}; KEi in our first group, or in the one
        the responder named in INVALID_KE_PAYLOAD (section 1.3), with the same SPIs."""
        self._rekeys_waiting.discard(old.inbound_spi)
        if old.inbound_spi not in self.children or self.state is not State.ESTABLISHED:
            return
        groups = offered_groups(self.config.child_proposals)
        group = group if group is not None else (groups[0] if groups else None)
        pfs = crypto.KEY_EXCHANGES[group]() if group is not None else None
        ni = self._random(NONCE_LEN)
        payloads = self._child_request_payloads(ExchangeType.CREATE_CHILD_SA, nonce=ni, rekey=old,
                                                ke=KePayload(group, pfs.public) if group and pfs else None,
                                                same_spis=attempt > 0)

        self._child_rekey_nonces[old.inbound_spi] = ni

        def on_answer(header: Header, answer: list[Payload], t: float) -> None:
            self._child_rekey_nonces.pop(old.inbound_spi, None)
            wanted = self._child_group_wanted(answer, group, attempt)
            if wanted is not None:
                self._send_rekey(old, t, wanted, attempt + 1)
                return
            try:
                nr = one_payload(answer, NoncePayload).data
            except Malformed as e:
                self._release(self._auth_child_spis)
                self._events.append(ChildFailed(_first_error(answer) or e.reason))
                return
            self._finish_child_initiator(answer, ni, nr, pfs, old, t)

        self._request(ExchangeType.CREATE_CHILD_SA, payloads, on_answer, now)

    def _child_group_wanted(self, answer: list[Payload], sent: int | None, attempt: int) -> int | None:
        """The group an INVALID_KE_PAYLOAD answer asks for, if we offered it and may still retry (section 1.3)."""
        notify = next((p for p in answer if isinstance(p, NotifyPayload) and p.type == Notify.INVALID_KE_PAYLOAD),
                      None)
        if notify is None or attempt >= MAX_INIT_RETRIES or len(notify.data) != 2:
            return None
        group = int.from_bytes(notify.data, "big")
        if group == sent or group not in offered_groups(self.config.child_proposals):
            self.counters[f"child_invalid_ke_group:{group}"] += 1
            return None
        self.counters["child_invalid_ke_payload"] += 1
        return group

    def _on_create_child_request(self, payloads: list[Payload], now: float) -> list[Payload]:
        """A CHILD_SA rekey (with PFS when a KE comes and our policy names its group) or an IKE SA rekey."""
        try:
            sa, ni = one_payload(payloads, SaPayload), one_payload(payloads, NoncePayload)
        except Malformed:
            return [NotifyPayload(Notify.INVALID_SYNTAX)]
        if any(p.protocol == ProtocolId.IKE for p in sa.proposals):
            return self._answer_ike_rekey(sa, ni.data, payloads, now)
        old = None
        rekey = [p for p in payloads if isinstance(p, NotifyPayload) and p.type == Notify.REKEY_SA]
        if rekey:
            spi = int.from_bytes(rekey[0].spi, "big")
            old = next((c for c in self.children.values() if c.outbound_spi == spi), None)
            if old is None:
                return [NotifyPayload(Notify.CHILD_SA_NOT_FOUND, b"", rekey[0].protocol, rekey[0].spi)]
            old.rekey_at = None  # the peer rekeys it: no need to do it ourselves (section 2.8 collision avoided)
        nr, before = self._random(NONCE_LEN), set(self.children)
        answer = self._respond_child(payloads, ni.data, nr, old, now, nonce_out=nr)
        made = set(self.children) - before
        if old is not None and old.inbound_spi in self._child_rekey_nonces and len(made) == 1:
            self._child_rivals[old.inbound_spi] = (made.pop(), ni.data, nr)  # settled by our answer (2.8.1)
        return answer

    # ------------------------------------------------------------ IKE SA rekeying (section 2.18)

    def rekey_ike(self, now: float) -> None:
        """CREATE_CHILD_SA with a new IKE proposal (our new SPI), Ni and KEi; the old SA is deleted after."""
        if self.state is not State.ESTABLISHED or self._successor is not None:
            return
        assert self.suite is not None
        spi = self.ike_spi_source()
        if spi is None:
            self.counters["ike_rekey_waiting_for_spi"] += 1
            self._ike_rekey_at = now + IKE_SPI_WAIT
            return
        ni = self._rekey_nonce = self._random(NONCE_LEN)
        ke = crypto.KEY_EXCHANGES[self.suite.dh]()
        proposals = tuple(Proposal(p.number, p.protocol, spi, p.transforms) for p in self.config.ike_proposals)

        def on_answer(header: Header, answer: list[Payload], t: float) -> None:
            self._rekey_nonce = None
            try:
                sa, nr, ker = one_payload(answer, SaPayload), one_payload(answer, NoncePayload), one_payload(answer, KePayload)
                chosen = sa.proposals[0] if len(sa.proposals) == 1 else None
                if chosen is None or len(chosen.spi) != 8 or not accepted_is_offered(chosen, self.config.ike_proposals):
                    raise Malformed("ike_rekey_proposal_not_offered")
                if ker.group != ike_suite(chosen).dh or ker.group != self._established_suite().dh:
                    raise Malformed("ke_group_mismatch")
                shared = ke.shared(ker.data)
            except Malformed as e:
                self.counters[f"ike_rekey_failed:{_first_error(answer) or e.reason}"] += 1
                if self._rival is not None:  # the peer's rekey stands alone (section 2.8.2)
                    self._take_over(self._rival[0], t)
                return
            mine = self._new_ike_sa(True, spi, chosen.spi, ike_suite(chosen), shared, ni, nr.data, t)
            self._settle_ike_rekey(mine, ni, nr.data, t)

        self._request(ExchangeType.CREATE_CHILD_SA, [SaPayload(proposals), NoncePayload(ni), KePayload(self.suite.dh,
                                                                                                     ke.public)],
                      on_answer, now)

    def _settle_ike_rekey(self, mine: IkeSession, ni: bytes, nr: bytes, now: float) -> None:
        """Our rekey's new IKE SA is up. Alone, it takes the CHILD_SAs and we delete the old SA. After a
        collision (section 2.8.2) the new SA created with the lowest of the four nonces is redundant: its
        creator deletes it, and the creator of the other one deletes the old SA. Both peers see the same nonces,
        so both pick the same survivor."""
        rival = self._rival
        if rival is not None and sorted((ni, nr)) < sorted(rival[1:]):  # a tie of lowest nonces: the next ones
            self.counters["ike_rekey_collision_lost"] += 1
            self._take_over(rival[0], now)
            mine._redundant = True
            mine.close(now)
            return
        if rival is not None:
            self.counters["ike_rekey_collision_won"] += 1
            rival[0]._redundant = True  # the peer deletes it
        self._take_over(mine, now)
        self._request(ExchangeType.INFORMATIONAL, [DeletePayload(ProtocolId.IKE)],
                      lambda h, p, t2: self._close("rekeyed"), now)

    def _answer_ike_rekey(self, sa: SaPayload, ni: bytes, payloads: list[Payload], now: float) -> list[Payload]:
        if self.config.own_ike_rekeys and self.initiator:
            return self._refuse_peer_ike_rekey(now)
        if self._successor is not None or self._rival is not None:  # being closed: section 2.25.2
            return [NotifyPayload(Notify.TEMPORARY_FAILURE)]
        chosen = choose(sa.proposals, self.config.ike_proposals)
        ke = _one_or_none(payloads, KePayload)
        if chosen is None or len(chosen.spi) != 8:
            return [NotifyPayload(Notify.NO_PROPOSAL_CHOSEN)]
        suite = ike_suite(chosen)
        if ke is None or ke.group != suite.dh:
            return [NotifyPayload(Notify.INVALID_KE_PAYLOAD, suite.dh.to_bytes(2, "big"))]
        mine = crypto.KEY_EXCHANGES[suite.dh]()
        shared = mine.shared(ke.data)  # a bad value raises Malformed: dropped and counted
        spi, nr = random_spi(self._random), self._random(NONCE_LEN)  # our SPIr: the NAT demultiplexes on SPIi
        new = self._new_ike_sa(False, chosen.spi, spi, suite, shared, ni, nr, now)
        if self._rekey_nonce is not None:  # ours is in flight too: decided when its answer comes (section 2.8.2)
            self._rival = (new, ni, nr)
        else:
            self._take_over(new, now)
        reply = Proposal(chosen.number, chosen.protocol, spi, chosen.transforms)
        return [SaPayload((reply,)), NoncePayload(nr), KePayload(suite.dh, mine.public)]

    def _refuse_peer_ike_rekey(self, now: float) -> list[Payload]:
        """Behind the extensible NAT the new IKE SA's SPIi must be one we leased (FIG. 8 step 801): a peer's
        rekey would make its own SPI the SPIi, which the NAT cannot demultiplex. TEMPORARY_FAILURE (section
        2.25) tells the peer to try later; we rekey at once instead, with a leased SPI."""
        self.counters["refused_peer_ike_rekey"] += 1
        if self._successor is None:
            self._ike_rekey_at = now
        return [NotifyPayload(Notify.TEMPORARY_FAILURE)]

    def _new_ike_sa(self, initiator: bool, spi_i: bytes, spi_r: bytes, suite: crypto.IkeSuite, shared: bytes,
                    ni: bytes, nr: bytes, now: float) -> IkeSession:
        """A rekey's new IKE SA, keyed from SK_d (old); the rekey's initiator is its original initiator (section
        2.18). It is announced (IkeRekeyed) so the endpoint routes to it; the CHILD_SAs move by _take_over."""
        assert self.suite is not None and self.keys is not None
        seed = crypto.rekey_skeyseed(self.suite.prf, self.keys.sk_d, shared, ni, nr)
        new = IkeSession(self.config, initiator=initiator, local=self.local, remote=self.remote,
                         spi=spi_i if initiator else spi_r, now=now, child_spi=self._child_spi, random=self._random)
        new.spi_i, new.spi_r, new._ni, new._nr = spi_i, spi_r, ni, nr
        new._install_keys(suite, seed)
        new.nat_local, new.nat_peer, new.ike_spi_source = self.nat_local, self.nat_peer, self.ike_spi_source
        new.udp_encap = self.udp_encap  # still behind the same NAT: its CHILD_SAs stay in UDP (RFC 3948)
        new._established(self.peer_id, now)
        self._events.append(IkeRekeyed(new))
        return new

    def _take_over(self, new: IkeSession, now: float) -> None:
        """``new`` is the surviving rekeyed IKE SA: the CHILD_SAs move to it (section 2.18), and so do their
        rekeys still waiting in our queue (they are due: the new SA runs them at once)."""
        new.children, self.children = self.children, {}
        for spi in self._rekeys_waiting & set(new.children):
            new.children[spi].rekey_at = now
        self._rekeys_waiting.clear()
        self._successor, self._rival = new, None
        self.counters["ike_rekeyed"] += 1

    # ------------------------------------------------------------ INFORMATIONAL

    def _on_informational_request(self, payloads: list[Payload], now: float) -> list[Payload]:
        """Delete (section 1.4.1): IKE closes everything; CHILD deletes are answered with our own SPIs."""
        deletes = [p for p in payloads if isinstance(p, DeletePayload)]
        if any(d.protocol == ProtocolId.IKE for d in deletes):
            self._close("deleted_by_peer")
            return []
        answer: list[Payload] = []
        for delete in deletes:
            mine = []
            for spi in delete.spis:
                child = next((c for c in self.children.values()
                              if c.protocol == delete.protocol and c.outbound_spi.to_bytes(4, "big") == spi), None)
                if child is not None:
                    mine.append(child.inbound_spi.to_bytes(4, "big"))
                    self._forget_child(child)
            if mine:
                answer.append(DeletePayload(delete.protocol, tuple(mine)))
        return answer

    def _established_suite(self) -> crypto.IkeSuite:
        """The IKE SA's suite, set once IKE_SA_INIT completed (a rekey runs only on an established SA)."""
        if self.suite is None:
            raise RuntimeError("IKE SA has no suite: it is not established")
        return self.suite

    # ------------------------------------------------------------ requests, retransmission, sealing

    def _request(self, exchange: ExchangeType, payloads: list[Payload],
                 handler: Callable[[Header, list[Payload], float], None], now: float) -> None:
        def send(t: float) -> None:
            mid = self._my_mid
            self._my_mid += 1
            self._transmit(mid, self._seal(exchange, mid, False, payloads), handler, t)
        self._queue_or_run(send, now)

    def _queue_or_run(self, action: Callable[[float], None], now: float) -> None:
        """Window of one (section 2.3): a second request waits for the first one's answer."""
        if self._pending is None:
            action(now)
        else:
            self._queue.append(action)

    def _run_queue(self, now: float) -> None:
        while self._pending is None and self._queue and self.state is not State.CLOSED:
            self._queue.popleft()(now)

    def _transmit(self, mid: int, data: bytes, handler: Callable[[Header, list[Payload], float], None],
                  now: float) -> None:
        self._pending = _Pending(mid, data, handler, 1, now + self.config.retransmission.delay(1))
        self._out.append((data, self.remote))

    def _retransmit(self, now: float) -> None:
        pending = self._pending
        assert pending is not None
        policy = self.config.retransmission
        if pending.sent >= policy.tries:
            self._close("peer_not_responding")
            return
        pending.sent += 1
        pending.deadline = now + policy.delay(pending.sent)
        self.counters["retransmissions"] += 1
        self._out.append((pending.data, self.remote))

    def _seal(self, exchange: ExchangeType, mid: int, response: bool, payloads: list[Payload]) -> bytes:
        """HDR | SK { payloads } (section 3.14): the header and SK header are integrity-protected too."""
        assert self._send is not None
        first, inner = encode_chain(payloads)
        sealed_len = self._send.sealed_length(len(inner))
        flags = (Flag.INITIATOR if self.initiator else 0) | (Flag.RESPONSE if response else 0)
        header = Header(self.spi_i, self.spi_r, PayloadType.SK, exchange, flags, mid)
        prefix = header.pack(HEADER_LEN + 4 + sealed_len) + bytes([first, 0]) + (4 + sealed_len).to_bytes(2, "big")
        return prefix + self._send.seal(prefix, inner)

    def _close(self, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        if self._successor is not None:
            reason = "rekeyed"
        elif self._redundant:
            reason = "rekey_collision"
        self.state = State.CLOSED
        self._pending = None
        self._queue.clear()
        for child in list(self.children.values()):
            self._forget_child(child)
        self._release(self._auth_child_spis)
        self._events.append(IkeClosed(reason))

    def _drop(self, reason: str) -> None:
        self.counters[f"dropped:{reason}"] += 1


# ------------------------------------------------------------ helpers


def group_of(ke: crypto.KeyExchange | None) -> int | None:
    """The DH group of one of our key exchanges, None for none."""
    for group, cls in crypto.KEY_EXCHANGES.items():
        if isinstance(ke, cls):
            return group
    return None


def _pfs_answer(chosen: Proposal, ke: KePayload | None) -> tuple[KePayload | None, bytes]:
    """The responder's KEr and g^ir for a chosen proposal with a group (already checked against KEi)."""
    group = dh_group(chosen)
    if group is None or ke is None:
        return None, b""
    mine = crypto.KEY_EXCHANGES[group]()
    return KePayload(group, mine.public), mine.shared(ke.data)


def _first_error(payloads: list[Payload]) -> str | None:
    errors = [p.type for p in payloads if isinstance(p, NotifyPayload) and p.type < ERROR_NOTIFY_LIMIT]
    return _notify_name(errors[0]) if errors else None


def _at_most_one(payloads: list[Payload], kind: type[_P]) -> _P | None:
    found = [p for p in payloads if isinstance(p, kind)]
    if len(found) > 1:
        raise Malformed(f"more_than_one_{kind.__name__}", f"found {len(found)}")
    return found[0] if found else None


def packed_ip(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


def _notify_types(payloads: list[Payload]) -> set[int]:
    return {p.type for p in payloads if isinstance(p, NotifyPayload)}


def _notify_data(payloads: list[Payload], notify: Notify) -> list[bytes]:
    return [p.data for p in payloads if isinstance(p, NotifyPayload) and p.type == notify]


def _notify_name(value: int) -> str:
    try:
        return Notify(value).name
    except ValueError:
        return f"notify_{value}"


def one_payload(payloads: list[Payload], kind: type[_P]) -> _P:
    found = [p for p in payloads if isinstance(p, kind)]
    if len(found) != 1:
        raise Malformed(f"need_one_{kind.__name__}", f"found {len(found)}")
    return found[0]


def _one_or_none(payloads: list[Payload], kind: type[_P]) -> _P | None:
    found = [p for p in payloads if isinstance(p, kind)]
    return found[0] if found else None


def _id(payloads: list[Payload], initiator: bool) -> IdPayload:
    found = [p for p in payloads if isinstance(p, IdPayload) and p.initiator == initiator]
    if len(found) != 1:
        raise Malformed("need_one_IDi" if initiator else "need_one_IDr")
    return found[0]


def _ts(payloads: list[Payload], initiator: bool) -> TsPayload:
    found = [p for p in payloads if isinstance(p, TsPayload) and p.initiator == initiator]
    if len(found) != 1 or not found[0].selectors:
        raise Malformed("need_one_TSi" if initiator else "need_one_TSr")
    return found[0]
