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
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client_agent.agent_ike import IkeKeying, IkeTable
from client_agent.ike.endpoint import IkeEndpoint
from client_agent.ike.events import ChildEstablished, IkeClosed, SpiReleased, describe
from client_agent.ike.keyfile import FILENAME as IKE_KEYFILE
from client_agent.ike.registry import IKE_PORT, ProtocolId
from client_agent.ike.session import random_child_spi
from client_agent.ipsec.keyfile import FILENAME as ESP_KEYFILE
from client_agent.ipsec.sad import SAD
from client_agent.ipsec.spd import SPD
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP

log = logging.getLogger("natlab.agent.ike")
IP_PROTOCOL = {ProtocolId.ESP: IPPROTO_ESP, ProtocolId.AH: IPPROTO_AH}


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
                 leased: LeasedIke | None = None) -> None:
        self.table, self.run_dir, self.leased = table, run_dir, leased
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        self.sock.setblocking(False)
        self.sock.bind((address, IKE_PORT))
        global_ip = leased.global_ip if leased else None
        config = table.config(natd_source=(global_ip, IKE_PORT) if leased and global_ip and leased.natd_global else None)
        child_spi = leased.take if leased else random_child_spi
        self.endpoint = IkeEndpoint(config if table.role == "responder" else None, (address, IKE_PORT),
                                    child_spi=child_spi)
        self.keying = IkeKeying(sad, spd, address, table.peer or "0.0.0.0", global_ip)
        self.counts: Counter[str] = Counter()
        self.session = None
        if table.role == "initiator":
            spi = leased.spi_i.to_bytes(8, "big") if leased else None
            self.session = self.endpoint.initiate(config, (_initiator_peer(table), IKE_PORT), time.monotonic(), spi)
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

    def tick(self) -> None:
        self.endpoint.handle_timer(time.monotonic())
        self.flush()

    def flush(self) -> None:
        for data, addr in self.endpoint.datagrams_to_send():
            self.sock.sendto(data, addr)
        changed = False
        for session, event in self.endpoint.next_events():
            if self.table.role == "responder":
                self.keying.remote = session.remote[0]
            log.info("ike: %s", json.dumps(describe(event)))
            self.counts[type(event).__name__] += 1
            if isinstance(event, SpiReleased) and self.leased is not None:
                self.leased.give_back(event.spi)
            changed |= self.keying.apply(event)
        if changed:
            _write_private(self.run_dir / IKE_KEYFILE, self.keying.ikev2_table())
            _write_private(self.run_dir / ESP_KEYFILE, self.keying.esp_sa())

    def close(self) -> None:
        """Delete our IKE SA (best effort, one datagram) and close the socket."""
        for session in list(self.endpoint.sessions.values()):
            session.close(time.monotonic())
        try:
            for data, addr in self.endpoint.datagrams_to_send():
                self.sock.sendto(data, addr)
        except OSError as err:
            log.warning("ike: cannot send the Delete: %s", err)
        self.sock.close()

    def status(self) -> dict[str, Any]:
        drops = Counter(self.endpoint.counters)
        for session in self.endpoint.sessions.values():
            drops.update(session.counters)
        return {"role": self.table.role, "events": dict(self.counts),
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
