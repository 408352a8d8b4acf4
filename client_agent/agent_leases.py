"""What a client behind the extensible NAT leases, and keeping it leased (seed FIG. 8 steps 801-807).

:class:`LeasePlan` is sans-IO: it knows, from the agent's config, every lease
the client needs before traffic flows, and reconciles what it holds with that
list whenever it is asked:

- the GPN definitions of ESP and AH (step 701: the NAT does not know them);
- each inbound SA's SPI with the global IP of ``[nat]`` and the peer as the
  foreign host (CL-SPI, step 802: "keeping the same global IP");
- each global port of the ``[nat]`` blocks, as a PCP PEER mapping to each
  peer with the suggested external address and port (steps 803-805). PEER
  rather than MAP: the NAT then lets in cleartext for that port from that peer
  only, not from the whole Internet.

Renewal is :class:`~client_agent.lease_client.LeaseClient`'s (RFC 6887 11.2.1).
A NAT that restarted (epoch check, RFC 6887 8.5) forgets the definitions too:
the plan defines them again, and anything the NAT then refuses or lets expire is
requested afresh on the next :meth:`LeasePlan.tick` (CL-RENEW). On exit every
lease is released (lifetime 0, RFC 6887 15).

:class:`LeaseSocket` is the shell: one UDP socket to the server's port 5351.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from dataclasses import dataclass

from client_agent.agent_config import INBOUND, OUTBOUND, AgentConfig
from client_agent.ipsec.sa import Protocol
from client_agent.lease_client import (
    IRT,
    RAND,
    Expired,
    Granted,
    LeaseClient,
    Refused,
    ServerRestarted,
    TimedOut,
    Transaction,
)
from netwire.ipv4 import IPPROTO_UDP
from netwire.pcp import (
    AH_DEFINITION,
    CLIENT_PORT,
    ESP_DEFINITION,
    ISAKMP_DEFINITION,
    SERVER_PORT,
    SHORT_ERROR_LIFETIME,
    Info,
    LeaseInfo,
    PeerInfo,
    Result,
)

log = logging.getLogger("natlab.agent")
# a release is sent once more (RFC 6887 8.1.1: after IRT, +-RAND) and its answer awaited a second before the
# agent stops waiting; the NAT expires what is left at the end of its lifetime
RELEASE_GIVE_UP_S = IRT * (1 + RAND) + 1.0
# requests in flight at once (definitions and leases): 64 agents sending their 33 requests each at once overflowed
# the queue of packet-ins Open vSwitch keeps for the controller (bench scale: datapath_drop_userspace_action_error)
LEASE_WINDOW = 8
DEFINITION_OF = {int(Protocol.ESP): ESP_DEFINITION, int(Protocol.AH): AH_DEFINITION, IPPROTO_UDP: ISAKMP_DEFINITION}
IKE_CHILD_SPIS = 4  # CHILD SPIs leased ahead per IKE peering: the first CHILD_SA and its rekeys (step 802)


@dataclass(frozen=True)
class Wanted:
    """One lease the client needs: what to ask for, and the protocol definition it depends on."""

    label: str
    info: Info
    needs_definition: int | None = None

    def granted_as_asked(self, got: Info) -> str | None:
        """Why the NAT's answer is not what the config needs (manual keys name the values), or None."""
        asked = self.info
        if isinstance(got, LeaseInfo) and isinstance(asked, LeaseInfo):
            if (got.global_ip, got.global_gpn) != (asked.global_ip, asked.global_gpn):
                return f"granted {got.global_ip} GPN {got.global_gpn}"
        elif isinstance(got, PeerInfo) and isinstance(asked, PeerInfo) and (got.external_ip, got.external_port) != (
                asked.external_ip, asked.external_port):
            return f"granted {got.external_ip}:{got.external_port}"
        return None


def wanted_leases(config: AgentConfig) -> list[Wanted]:
    """Every lease ``config`` needs, SPIs first (FIG. 8 order: 802, then 803-805)."""
    nat, _ = config.behind_nat()  # only an agent with [nat] leases
    wanted = []
    for entry in config.sas:
        if entry.direction == INBOUND:
            sa = entry.sa
            proto = int(sa.protocol)
            info = LeaseInfo(b"", proto, sa.spi, sa.spi, nat.global_ip, sa.src)
            wanted.append(Wanted(f"{sa.protocol.name} SPI 0x{sa.spi:08x}", info, proto))
    peers = sorted({e.sa.dst for e in config.sas if e.direction == OUTBOUND and e.sa.dst}
                   | ({config.ike.peer} if config.ike is not None and config.ike.peer else set()))
    for proto, (low, high) in sorted(nat.ports.items()):
        name = {6: "TCP", 17: "UDP"}[proto]
        for peer in peers:
            for port in range(low, high + 1):
                lease = PeerInfo(b"", proto, port, port, nat.global_ip, 0, peer)
                wanted.append(Wanted(f"{name} port {port} for {peer}", lease))
    return wanted


def ike_leases(config: AgentConfig, spi_i: int, child_spis: list[tuple[int, int]],
               spare_spi_i: int | None = None) -> list[Wanted]:
    """FIG. 8 step 801 for IKE: the initiator SPI (ISAKMP's GPN: UDP 500, 64 bits at 0), and the spare one an
    IKE SA rekey will use (RFC 7296 2.18: the rekey's initiator picks the new SPIi); step 802, the inbound
    CHILD SPIs IKE will propose; each leased on the global IP with the peer as the foreign host."""
    wanted = [ike_spi_lease(config, spi) for spi in (spi_i, spare_spi_i) if spi is not None]
    return wanted + [child_spi_lease(config, proto, spi) for proto, spi in child_spis]


def ike_spi_lease(config: AgentConfig, spi_i: int) -> Wanted:
    """Step 801: one IKE initiator SPI (the seed's cookie) on the global IP, the IKE peer as the foreign host."""
    nat, ike = config.nat, config.ike
    assert nat is not None and ike is not None and ike.peer is not None
    return Wanted(ike_spi_label(spi_i), LeaseInfo(b"", IPPROTO_UDP, spi_i, spi_i, nat.global_ip, ike.peer,
                                                  port=ISAKMP_DEFINITION.port), IPPROTO_UDP)


def ike_spi_label(spi_i: int) -> str:
    return f"IKE SPI 0x{spi_i:016x}"


def child_spi_lease(config: AgentConfig, protocol: int, spi: int) -> Wanted:
    """Step 802: one inbound CHILD SPI on the global IP, the IKE peer as the foreign host."""
    nat, ike = config.nat, config.ike
    assert nat is not None and ike is not None
    return Wanted(child_spi_label(protocol, spi), LeaseInfo(b"", protocol, spi, spi, nat.global_ip, ike.peer), protocol)


def child_spi_label(protocol: int, spi: int) -> str:
    return f"{Protocol(protocol).name} CHILD SPI 0x{spi:08x}"


class LeasePlan:
    """The leases of ``wanted``, kept granted through ``client``; all times are the caller's."""

    def __init__(self, client: LeaseClient, wanted: list[Wanted], lifetime: int) -> None:
        self.client = client
        self.wanted = wanted
        self.lifetime = lifetime
        self.defined: set[int] = set()
        self._defining: dict[int, Transaction] = {}
        self._pending: dict[int, Transaction] = {}  # index in wanted -> request in flight
        self._held: dict[int, bytes] = {}  # index in wanted -> nonce of the granted lease
        self.retired: set[int] = set()  # indices given back for good (an IKE CHILD SPI whose SA is gone)
        self.problems: dict[str, str] = {}  # label -> why it is not (yet) granted
        self._retry_at: dict[int, float] = {}  # index in wanted -> not before (after a refusal, RFC 6887 7.2)
        self.releasing = False
        self.counters: Counter[str] = Counter()

    @property
    def ready(self) -> bool:
        return len(self._held) == len(self.wanted) - len(self.retired)

    def tick(self, now: float) -> None:
        """Ask for whatever is wanted and neither held nor asked for, at most LEASE_WINDOW at a time;
        definitions first.

        A refused request is asked again only after the error's lifetime (RFC
        6887 7.2: 30 s, or 30 min when retrying cannot cure it); nothing is
        asked once the leases are being released.
        """
        if self.releasing:
            return
        for index, want in enumerate(self.wanted):
            if len(self._pending) + len(self._defining) >= LEASE_WINDOW:
                return  # the next answer asks for more
            if (index in self._held or index in self._pending or index in self.retired
                    or self._retry_at.get(index, now) > now):
                continue
            proto = want.needs_definition
            if proto is not None and proto not in self.defined:
                if proto not in self._defining:
                    self._defining[proto] = self.client.request(DEFINITION_OF[proto], 0, now)
                continue
            self._pending[index] = self.client.request(want.info, self.lifetime, now)
            self.counters["requested"] += 1

    def handle(self, events: list, now: float) -> None:
        """Take the lease client's events: grants, refusals, expiries, a restarted NAT."""
        for event in events:
            if isinstance(event, ServerRestarted):
                log.warning("the NAT restarted (epoch %d -> %d): defining and leasing again",
                            event.previous_epoch, event.epoch)
                self.counters["nat_restarts"] += 1
                self.defined.clear()
            elif isinstance(event, Granted | Refused | TimedOut):
                self._settled(event, now)
            elif isinstance(event, Expired):
                self._lost(event.lease.nonce, "expired before a renewal was granted")
        self.tick(now)

    def add(self, want: Wanted, now: float) -> None:
        """Lease one more thing from now on (a fresh CHILD SPI for the next rekey)."""
        self.wanted.append(want)
        self.tick(now)

    def retire(self, label: str, now: float) -> Transaction | None:
        """Give one lease back for good (lifetime 0): its SA was deleted or rekeyed away (step 802's end)."""
        index = next((i for i, w in enumerate(self.wanted) if w.label == label and i not in self.retired), None)
        if index is None:
            return None
        self.retired.add(index)
        nonce = self._held.pop(index, None)
        lease = self.client.leases.get(nonce) if nonce is not None else None
        self.counters["retired"] += 1
        return self.client.release(lease, now, give_up_after=RELEASE_GIVE_UP_S) if lease is not None else None

    def held_gpns(self, protocol: int) -> set[int]:
        """The global GPNs of ``protocol`` this plan holds right now."""
        infos = (self.wanted[i].info for i in self._held)
        return {_global_gpn(info) for info in infos if isinstance(info, LeaseInfo) and info.protocol == protocol}

    def release_all(self, now: float) -> list[Transaction]:
        """Step 807: give every lease back (lifetime 0)."""
        self.releasing = True
        releases = [self.client.release(lease, now, give_up_after=RELEASE_GIVE_UP_S)
                    for lease in list(self.client.leases.values())]
        self._held.clear()
        return releases

    def status(self) -> dict:
        return {"ready": self.ready, "held": len(self._held), "wanted": len(self.wanted),
                "problems": dict(self.problems), "counters": dict(self.counters) | dict(self.client.counters)}

    def _settled(self, event: Granted | Refused | TimedOut, now: float) -> None:
        tx = event.transaction
        if self._definition_settled(event):
            return
        index = next((i for i, pending in self._pending.items() if pending is tx), None)
        if index is None:  # a renewal or release of a lease we hold
            self._renewal_settled(event)
            return
        del self._pending[index]
        want = self.wanted[index]
        if _undefined(event):
            # The NAT forgot the definition (a restart its epoch did not yet betray): define again, then ask again.
            self.defined.discard(want.needs_definition)
            self.problems[want.label] = f"{_why(event)}; defining the protocol again"
            self.counters["redefined"] += 1
            return
        if not isinstance(event, Granted) or event.lease is None:
            self.problems[want.label] = _why(event)
            self.counters["refused"] += 1
            self._retry_at[index] = now + (event.lifetime if isinstance(event, Refused) else SHORT_ERROR_LIFETIME)
            return
        mismatch = want.granted_as_asked(event.lease.info)
        if mismatch:
            self.problems[want.label] = f"{mismatch}, not what the config names"
            self.client.release(event.lease, now, give_up_after=1.0)
            self._retry_at[index] = now + SHORT_ERROR_LIFETIME
            return
        self.problems.pop(want.label, None)
        self._held[index] = event.lease.nonce
        self.counters["granted"] += 1

    def _definition_settled(self, event: Granted | Refused | TimedOut) -> bool:
        """Was ``event`` the answer to one of our DEFINEs (step 701)? Then note what it defined."""
        for proto, defining in list(self._defining.items()):
            if defining is event.transaction:
                del self._defining[proto]
                if isinstance(event, Granted):
                    self.defined.add(proto)
                else:
                    self.problems[f"definition of protocol {proto}"] = _why(event)
                return True
        return False

    def _renewal_settled(self, event: Granted | Refused | TimedOut) -> None:
        """A renewal answered (RFC 6887 11.2.1): counted, or its lease lost and asked for again."""
        tx = event.transaction
        if tx.purpose == "renew" and isinstance(event, Granted):
            self.counters["renewed"] += 1
        elif tx.purpose == "renew" and tx.lease is not None and not tx.lease.alive:
            index = self._lost(tx.lease.nonce, _why(event))
            if index is not None and _undefined(event):
                self.defined.discard(self.wanted[index].needs_definition)

    def _lost(self, nonce: bytes, why: str) -> int | None:
        index = next((i for i, held in self._held.items() if held == nonce), None)
        if index is not None:
            del self._held[index]
            self.problems[self.wanted[index].label] = f"lost: {why}; leasing again"
            self.counters["lost"] += 1
        return index


def _undefined(event: Granted | Refused | TimedOut) -> bool:
    return isinstance(event, Refused) and event.result == Result.PROTOCOL_NOT_DEFINED


def _why(event: Refused | TimedOut | Granted) -> str:
    if isinstance(event, Refused):
        return f"refused: {event.result.name}"
    if isinstance(event, TimedOut):
        return "no answer from the NAT"
    return "granted without a lease"


class LeaseSocket:
    """The plan's UDP socket to the lease server, and one on the PCP client port 5350 for the
    server's unsolicited ANNOUNCEs (RFC 6887 14.1.3, sent to 224.0.0.1 after the NAT lost its state:
    the epoch check then re-leases everything at once); ``pump`` and ``flush`` move their datagrams."""

    def __init__(self, plan: LeasePlan, server: str, port: int = SERVER_PORT) -> None:
        self.plan = plan
        self.server = (server, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.announce = _announce_socket()

    def fileno(self) -> int:
        return self.sock.fileno()

    def filenos(self) -> list[int]:
        """Every socket to wait on."""
        return [s.fileno() for s in (self.sock, self.announce) if s is not None]

    def pump(self, now: float) -> None:
        """Read every waiting answer and ANNOUNCE, then send what is due."""
        client = self.plan.client
        for sock in (self.sock, self.announce):
            while sock is not None:
                try:
                    data, (source, _port) = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                self.plan.handle(client.receive(data, now, source), now)
        self.flush(now)

    def tick(self, now: float) -> None:
        """Timers: retransmissions, renewals, expiries; then send."""
        self.plan.handle(self.plan.client.handle_timer(now), now)
        self.flush(now)

    def flush(self, now: float) -> None:
        for datagram in self.plan.client.datagrams_to_send(now):
            try:
                self.sock.sendto(datagram, self.server)
            except OSError as err:  # e.g. no route yet: the retransmission schedule tries again
                self.plan.counters["send_error"] += 1
                log.debug("lease request not sent: %s", err)

    def close(self) -> None:
        self.sock.close()
        if self.announce is not None:
            self.announce.close()


def _announce_socket() -> socket.socket | None:
    """UDP 5350 on every address (224.0.0.1 included: every interface is in the all-hosts group);
    SO_REUSEADDR so that several agents and `natlab lease` on one host each get every ANNOUNCE.
    None if the port cannot be had: leases then notice a restart at their next renewal."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("", CLIENT_PORT))
    except OSError as err:
        log.warning("cannot listen for PCP ANNOUNCE on UDP %d: %s", CLIENT_PORT, err)
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def _global_gpn(info: LeaseInfo) -> int:
    """The global GPN of a lease the plan asked for: the plan always names it (SPI leases ask for their own)."""
    if info.global_gpn is None:
        raise RuntimeError(f"lease of protocol {info.protocol} names no global GPN")
    return info.global_gpn
