"""The agent's IKE shell: a UDP socket on port 500 (marked, so it bypasses the TUN), the endpoint, key files.

Owned by :class:`client_agent.agent.Agent` when its config has ``[ike]``. The
socket carries the agent's fwmark, so IKE to the peer is routed by the main
table and never into the TUN that the peer's address routes to. Events go
through :class:`client_agent.agent_ike.IkeKeying` into the datapath's SAD/SPD;
``esp_sa`` and ``ikev2_decryption_table`` are rewritten on every change.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client_agent.agent_ike import IkeKeying, IkeTable
from client_agent.ike.endpoint import IkeEndpoint
from client_agent.ike.events import ChildDeleted, ChildEstablished, Event, IkeClosed, SpiReleased, describe
from client_agent.ike.keyfile import FILENAME as IKE_KEYFILE
from client_agent.ike.registry import IKE_PORT, NATT_PORT, ProtocolId
from client_agent.ike.session import IkeSession, State, random_child_spi
from client_agent.ipsec.keyfile import AH_FILENAME as AH_KEYFILE
from client_agent.ipsec.keyfile import FILENAME as ESP_KEYFILE
from client_agent.ipsec.sad import SAD
from client_agent.ipsec.spd import SPD
from client_agent.natt import NattSocket
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP

log = logging.getLogger("natlab.agent.ike")
IP_PROTOCOL = {ProtocolId.ESP: IPPROTO_ESP, ProtocolId.AH: IPPROTO_AH}
CLOSE_WAIT_S = 0.5  # how long a stopping agent waits for the answers to its Deletes


@dataclass
class LeasedIke:
    """What the agent leased for IKE behind the extensible NAT: SPIi (step 801) and CHILD SPIs (step 802).

    The CHILD SPIs are a pool leased ahead: IKE proposes only one whose lease
    is held (``held``), and when its SA is deleted or rekeyed away
    ``on_released`` gives that lease back and returns a fresh SPI, being leased
    for the next rekey. Without the callbacks (tests) every SPI counts as held
    and a released one goes back to the pool. ``natd_global`` False is the
    control: NAT detection over the private address.
    """

    global_ip: str
    spi_i: int
    child_spis: list[tuple[int, int]]
    natd_global: bool = True
    held: Callable[[int, int], bool] = lambda protocol, spi: True
    on_released: Callable[[int, int], int] | None = None
    free: list[tuple[int, int]] = field(default_factory=list)
    spare_spi_i: int | None = None  # the next IKE SA's SPIi (an IKE SA rekey, RFC 7296 2.18), leased ahead
    ike_held: Callable[[int], bool] = lambda spi: True
    on_ike_spi_taken: Callable[[int], int] | None = None  # leases the spare after this one, returns it
    on_ike_spi_released: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        self.free = list(self.child_spis)

    def take(self, protocol: ProtocolId) -> int:
        """A leased SPI of ``protocol`` (IKE's ESP/AH id mapped to the IP protocol the lease is for)."""
        ip_protocol = IP_PROTOCOL[protocol]
        for entry in self.free:
            if entry[0] == ip_protocol and self.held(*entry):
                self.free.remove(entry)
                return entry[1]
        raise RuntimeError(f"no leased {protocol.name} CHILD SPI is free")

    def next_ike_spi(self) -> bytes | None:
        """Step 801 again, for an IKE SA rekey: the spare SPIi once its lease is held (None: not yet, the
        session retries); a fresh spare is then leased for the rekey after this one."""
        spare = self.spare_spi_i
        if spare is None or not self.ike_held(spare):
            return None
        self.spare_spi_i = self.on_ike_spi_taken(spare) if self.on_ike_spi_taken is not None else None
        return spare.to_bytes(8, "big")

    def ike_sa_gone(self, spi_i: bytes) -> None:
        """An IKE SA we initiated was rekeyed away: its SPIi lease goes back (the successor has its own)."""
        if self.on_ike_spi_released is not None:
            self.on_ike_spi_released(int.from_bytes(spi_i, "big"))

    def give_back(self, spi: int) -> None:
        for entry in list(self.child_spis):
            if entry[1] != spi or entry in self.free:
                continue
            if self.on_released is None:
                self.free.append(entry)
                continue
            self.child_spis.remove(entry)
            fresh = (entry[0], self.on_released(*entry))
            self.child_spis.append(fresh)
            self.free.append(fresh)


class IkeShell:
    def __init__(self, table: IkeTable, address: str, sad: SAD, spd: SPD, run_dir: Path, mark: int,
                 leased: LeasedIke | None = None, natt: NattSocket | None = None) -> None:
        self.table, self.run_dir, self.leased, self.natt = table, run_dir, leased, natt
        self.floated: set[tuple[str, int]] = set()  # peers whose IKE came on 4500 (RFC 7296 section 2.23)
        if natt is not None:
            natt.on_ike = self._on_natt_ike
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        self.sock.setblocking(False)
        self.sock.bind((address, IKE_PORT))
        global_ip = leased.global_ip if leased else None
        config = table.config(natd_source=(global_ip, IKE_PORT) if leased and global_ip and leased.natd_global else None,
                              own_ike_rekeys=leased is not None)
        child_spi = leased.take if leased else random_child_spi
        self.endpoint = IkeEndpoint(config if table.role == "responder" else None, (address, IKE_PORT),
                                    child_spi=child_spi)
        self.keying = IkeKeying(sad, spd, address, table.peer or "0.0.0.0", global_ip)
        self.counts: Counter[str] = Counter()
        self.session = None
        if table.role == "initiator":
            spi = leased.spi_i.to_bytes(8, "big") if leased else None
            self.session = self.endpoint.initiate(config, (_initiator_peer(table), IKE_PORT), time.monotonic(), spi)
            if leased is not None:  # rekeyed IKE SAs take leased SPIs too (their successors inherit the source)
                self.session.ike_spi_source = leased.next_ike_spi
        self.flush()

    def fileno(self) -> int:
        return self.sock.fileno()

    def pump(self) -> None:
        """Read every waiting datagram, then send and apply what came of it."""
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                break
            self.endpoint.receive_datagram(data, addr, time.monotonic())
        self.flush()

    def _on_natt_ike(self, data: bytes, addr: tuple[str, int]) -> None:
        self.floated.add(addr)
        self.endpoint.receive_datagram(data, addr, time.monotonic())
        self.flush()

    def tick(self) -> None:
        self.endpoint.handle_timer(time.monotonic())
        self.flush()
        if self.natt is not None:
            self.natt.tick()

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.natt is not None and (addr[1] == NATT_PORT or addr in self.floated):
            self.natt.send_ike(data, addr)
        else:
            self.sock.sendto(data, addr)

    def _encap(self, session: IkeSession, event: Event) -> None:
        """A UDP-encapsulated CHILD_SA's ESP goes to the peer's NAT-T address (RFC 3948); a deleted one's stops."""
        if self.natt is None:
            return
        if isinstance(event, ChildEstablished) and event.child.udp_encap:
            self.natt.route(event.child.outbound_spi, session.remote)
        elif isinstance(event, ChildDeleted):
            self.natt.unroute(event.child.outbound_spi)

    def flush(self) -> None:
        for data, addr in self.endpoint.datagrams_to_send():
            self._send(data, addr)
        changed = False
        for session, event in self.endpoint.next_events():
            self._encap(session, event)
            if self.table.role == "responder":
                self.keying.remote = session.remote[0]
            log.info("ike: %s", json.dumps(describe(event)))
            self.counts[type(event).__name__] += 1
            if isinstance(event, SpiReleased) and self.leased is not None:
                self.leased.give_back(event.spi)
            if (isinstance(event, IkeClosed) and event.reason in ("rekeyed", "rekey_collision") and self.leased is not None
                    and session.initiator):
                self.leased.ike_sa_gone(session.spi_i)
            changed |= self.keying.apply(event)
        if changed:
            _write_private(self.run_dir / IKE_KEYFILE, self.keying.ikev2_table())
            _write_private(self.run_dir / ESP_KEYFILE, self.keying.esp_sa())
            _write_private(self.run_dir / AH_KEYFILE, self.keying.ah_sa())

    def close(self, wait: float = CLOSE_WAIT_S) -> None:
        """Delete our IKE SAs (RFC 7296 section 1.4.1) and wait, at most ``wait`` seconds, for the peers'
        answers before closing the socket: closed at once, it made each answer meet a closed port (an ICMP
        port unreachable on the peer's wire). A peer that does not answer costs the whole wait, no more."""
        now = time.monotonic()
        for session in list(self.endpoint.sessions.values()):
            session.close(now)
        deadline = now + wait
        try:
            self.flush()
            while self._deleting() and (left := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([s for s in (self.sock, self.natt) if s is not None], [], [], left)
                self.pump()
                if self.natt is not None and self.natt in readable:
                    while self.natt.read() is not None:  # IKE on 4500 reaches _on_natt_ike; ESP now is dropped
                        pass
        except OSError as err:
            log.warning("ike: cannot finish the Delete: %s", err)
        self.sock.close()

    def _deleting(self) -> bool:
        return any(session.state is not State.CLOSED for session in self.endpoint.sessions.values())

    def status(self) -> dict[str, Any]:
        drops = Counter(self.endpoint.counters)
        for session in self.endpoint.sessions.values():
            drops.update(session.counters)
        return {"role": self.table.role, "events": dict(self.counts),
                "natt": None if self.natt is None else self.natt.status(),
                "children": self.counts[ChildEstablished.__name__] - self.counts["ChildDeleted"],
                "closed": self.counts[IkeClosed.__name__], "counters": dict(drops)}


def _initiator_peer(table: IkeTable) -> str:
    """The responder's address, which the [ike] table of an initiator always names (parse_ike refuses one without)."""
    if table.peer is None:
        raise ValueError("[ike] peer: an initiator needs the responder's address")
    return table.peer


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
