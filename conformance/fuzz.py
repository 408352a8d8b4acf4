"""``natlab fuzz``: hostile input through the sans-IO cores, with invariants checked after every step.

Not a test: a command that hammers two doors a stranger on the shared link can
knock on (issue 9, item 6).

- Lease frames (random, mutated valid ones, valid ones) from honest hosts and
  from forgers (an honest host's IP with another MAC, one MAC cycling IPs, the
  gateway's and the broadcast address) through ``NatCore.packet_in``, mixed
  with ticks, flow removals and NAPT traffic. After every step the table's own
  invariants hold (``TranslationTable.check_invariants``) and so do the cross-
  client ones: every leased entry has an owner whose IP is its private IP; no
  frame from B adds, renews or releases an entry of A, and READ shows B
  nothing of A's; quotas (per origin, per MAC, per-host ports, definitions)
  are never exceeded.
- Malformed ESP/AH packets (truncated, bit-flipped where ESP/AH protect,
  wrong SPI, replayed) through the agent's inbound processing
  (``client_agent.ipsec.processing.decapsulate``): none may be accepted, and
  the honest packets sent between them must all be.

Pure: it drives the cores with bytes and a made-up clock; the seed makes a run
repeatable. Exits 1 on any unhandled exception or broken invariant.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from client_agent.ipsec import processing
from client_agent.ipsec.errors import IPsecError
from client_agent.ipsec.sa import Mode, SAState
from client_agent.ipsec.sad import SAD
from client_agent.ipsec.suites import all_suites
from nat_app.config import NatConfig, global_pool
from nat_app.decide import NatCore
from nat_app.gpn import GpnSpace
from nat_app.lease_server import Origin
from nat_app.messages import Output, PacketOut
from nat_app.table import EntryKind
from netwire import natpmp, pcp, plan
from netwire.ethernet import ARP_OP_REPLY, ETH_HEADER_LEN, ETH_TYPE_IPV4, Arp, EthernetHeader, arp_frame
from netwire.ipv4 import IPPROTO_AH, build_ipv4_header, build_udp

__pure__ = True

SERVERS = (plan.server_ip(1), plan.server_ip(2))
BAD_FOREIGN = ("127.0.0.1", "224.0.0.1", "255.255.255.255", plan.client_ip(2), plan.global_ips(1)[0], "0.0.0.7")
PROGRESS_EVERY = 10_000
TUNNEL = {"src": plan.OFF_PLAN_IP, "dst": plan.SGW_OUTSIDE_IP}  # a security gateway's outer addresses


@dataclass(frozen=True)
class Host:
    ip: str
    mac: str
    honest: bool


HOSTS = (
    *(Host(plan.client_ip(i), f"00:00:00:00:00:{i:02x}", True) for i in range(1, 5)),
    Host(plan.client_ip(1), "00:00:00:00:66:01", False),  # an honest host's IP, another MAC
    *(Host(plan.client_ip(i), "00:00:00:00:66:02", False) for i in (2, 3, 50, 51, 52, 53)),  # one MAC cycling IPs
    Host(plan.GATEWAY_IP, "00:00:00:00:66:03", False),  # the gateway's own address
    Host(plan.client_ip(255), "00:00:00:00:66:04", False),  # the inside network's broadcast address
)


def fuzz_config() -> NatConfig:
    """Small quotas and limits, so that a run reaches them often."""
    return NatConfig(globals=global_pool(2), lease_quota=6, lease_mac_quota=10, napt_ports_per_host=8,
                     definition_quota=2, lease_min_lifetime=120)


class InvariantBroken(Exception):
    """A cross-client or table invariant failed: a bug in the NAT, not in the input."""


@dataclass
class Granted:
    host: Host
    request: pcp.Request


@dataclass
class LeaseFuzzer:
    """Drives one NatCore with hostile lease frames; see the module docstring."""

    seed: int
    config: NatConfig = field(default_factory=fuzz_config)
    now: float = 1.0
    results: Counter = field(default_factory=Counter)
    granted: list[Granted] = field(default_factory=list)
    frames: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.core = NatCore(self.config, rng=random.Random(self.seed))
        self.core.switch_connected(0.0)
        for server in SERVERS:  # the foreign hosts' MACs, so NAPT traffic goes out at once
            arp = Arp(ARP_OP_REPLY, "00:00:00:00:cc:01", server, self.config.outside_mac, self.config.globals[0])
            self.core.packet_in(self.config.outside_port, arp_frame(arp, self.config.outside_mac), 0.0)

    # ------------------------------------------------------------ one step

    def step(self) -> None:
        """One event: mostly a lease frame, sometimes a tick, a flow removal or NAPT traffic."""
        self.now += self.rng.choice((0.0, 0.01, 0.5, 3.0, 40.0, 40.0, -2.0))  # now and then a clock step back
        roll = self.rng.random()
        if roll < 0.04:
            self.core.tick(self.now)
        elif roll < 0.06:
            self._flow_removed()
        elif roll < 0.12:
            self._napt_packet()
        else:
            self._lease_frame()
            self.frames += 1
        self.check()

    def _flow_removed(self) -> None:
        entries = list(self.core.table)
        cookie = self.rng.choice(entries).id if entries and self.rng.random() < 0.8 else self.rng.getrandbits(64)
        self.core.flow_removed(cookie, self.now)

    def _napt_packet(self) -> None:
        host = self.rng.choice(HOSTS)
        packet = build_udp(host.ip, self.rng.choice(SERVERS), self.rng.randint(1, 65535), 9, b"x")
        self.core.packet_in(self.config.inside_port, self._eth(host) + packet, self.now)

    def _lease_frame(self) -> None:
        host = self.rng.choice(HOSTS)
        request = self._request(host)
        kind = self.rng.random()
        if kind > 0.9:
            payload, label = self._natpmp(), "natpmp"  # version 0 beside PCP (nat_app/natpmp_server.py)
        elif request is None or kind < 0.1:
            payload, label = self.rng.randbytes(self.rng.randint(0, 120)), "random"
        else:
            payload = pcp.encode_request(request)
            if kind < 0.3:
                payload, label = self._mutate(payload), "mutated"
            else:
                label = "valid"
        before = self._leased()
        messages = self.core.packet_in(self.config.inside_port, self._eth(host) + build_udp(
            host.ip, self.config.gateway_ip, pcp.CLIENT_PORT, pcp.SERVER_PORT, payload), self.now)
        response = self._response(messages)
        self._judge(host, before, response)
        self.results[(label, _result_name(response, by_opcode=label == "valid"))] += 1
        if label == "valid" and request is not None and response is not None and response.result == pcp.Result.SUCCESS \
                and request.opcode in (pcp.Opcode.LEASE, pcp.Opcode.MAP, pcp.Opcode.PEER) and request.lifetime:
            self.granted.append(Granted(host, request))
            del self.granted[:-200]

    # ------------------------------------------------------------ requests

    def _request(self, host: Host) -> pcp.Request | None:
        makers: list[Callable[[Host], pcp.Request | None]] = [self._define, self._lease, self._lease, self._map,
                                                             self._again, self._again, self._read]
        try:
            return self.rng.choice(makers)(host)
        except ValueError:  # the codec refuses to build it: send random bytes instead
            return None

    def _natpmp(self) -> bytes:
        """A NAT-PMP request: map, renew, delete, delete all, the address, or one of them mutated."""
        protocol, port = self.rng.choice((6, 17)), self.rng.choice((0, 7000, 8080, self.rng.randint(1, 65535)))
        lifetime = self.rng.choice((0, 0, 120, 7200, self.rng.getrandbits(32)))
        request = self.rng.choice((natpmp.AddressRequest(), natpmp.MapRequest(protocol, port, port, lifetime)))
        payload = natpmp.encode_request(request)
        return self._mutate(payload) if self.rng.random() < 0.3 else payload

    def _lifetime(self) -> int:
        return self.rng.choice((0, 120, 600, 3600, pcp.LIFETIME_UNSPECIFIED, self.rng.getrandbits(32)))

    def _define(self, host: Host) -> pcp.Request:
        gre = pcp.GpnDefinition(b"", 47, 0, 0, None, 32, 32, 1, 0xFFFFFFFF, 0)
        choices = (pcp.ESP_DEFINITION, pcp.AH_DEFINITION, pcp.ISAKMP_DEFINITION, gre,
                   replace(gre, range_max=2), replace(pcp.ESP_DEFINITION, range_max=257),
                   pcp.GpnDefinition(b"", 17, 17, self.rng.choice((53, 40000, 5351)), None, 0, 1, 0, 1, 0),
                   pcp.GpnDefinition(b"", self.rng.randint(0, 255), 0, 0, None, 0, 16, 1, 9, 0))
        d = replace(self.rng.choice(choices), nonce=self.rng.randbytes(12))
        return pcp.Request(pcp.Opcode.DEFINE, self._lifetime(), host.ip, d)

    def _lease(self, host: Host) -> pcp.Request:
        protocol, port = self.rng.choice(((50, 0), (51, 0), (17, 500), (47, 0), (50, 500), (99, 0)))
        hot = self.rng.choice((None, None, 256, 257, 300, self.rng.getrandbits(32)))
        info = pcp.LeaseInfo(self.rng.randbytes(12), protocol, hot, self.rng.choice((None, hot, 258)),
                             self.rng.choice((None, None, *self.config.globals)), self._foreign(), port=port)
        return pcp.Request(pcp.Opcode.LEASE, self._lifetime(), self._client_ip(host), info)

    def _map(self, host: Host) -> pcp.Request:
        protocol, port = self.rng.choice((6, 17)), self.rng.choice((500, 7000, 7001, self.rng.randint(1, 65535)))
        nonce, suggested = self.rng.randbytes(12), self.rng.choice((0, port, 40000))
        if self.rng.random() < 0.5:
            mapped = pcp.MapInfo(nonce, protocol, port, suggested, self.rng.choice((None, *self.config.globals)))
            return pcp.Request(pcp.Opcode.MAP, self._lifetime(), host.ip, mapped)
        peer = pcp.PeerInfo(nonce, protocol, port, suggested, None, 9, self._foreign())
        return pcp.Request(pcp.Opcode.PEER, self._lifetime(), host.ip, peer)

    def _again(self, host: Host) -> pcp.Request | None:
        """Renew or release a granted lease: by its owner, or by a stranger with the sniffed nonce."""
        if not self.granted:
            return None
        old = self.rng.choice(self.granted)
        if self.rng.random() < 0.5:
            host = old.host
        return pcp.Request(old.request.opcode, self.rng.choice((0, 600)), host.ip, old.request.info)

    def _read(self, host: Host) -> pcp.Request:
        nonces = [g.request.info.nonce for g in self.granted if g.request.info is not None]
        nonce = self.rng.choice(nonces) if nonces and self.rng.random() < 0.8 else self.rng.randbytes(12)
        return pcp.Request(pcp.Opcode.READ, 0, host.ip, pcp.ReadInfo(nonce, ()))

    def _foreign(self) -> str | None:
        return self.rng.choice((None, *SERVERS, *SERVERS, self.rng.choice(BAD_FOREIGN)))

    def _client_ip(self, host: Host) -> str:
        return host.ip if self.rng.random() < 0.95 else plan.client_ip(9)

    def _mutate(self, payload: bytes) -> bytes:
        raw = bytearray(payload)
        for _ in range(self.rng.randint(1, 4)):
            raw[self.rng.randrange(len(raw))] ^= 1 << self.rng.randrange(8)
        if self.rng.random() < 0.2:
            raw = raw[: self.rng.randint(0, len(raw))]
        return bytes(raw)

    # ------------------------------------------------------------ judging

    def _eth(self, host: Host) -> bytes:
        return EthernetHeader(self.config.inside_mac, host.mac, ETH_TYPE_IPV4).build()

    def _origin(self, host: Host) -> Origin:
        return Origin(self.config.inside_port, host.mac, host.ip)

    def _leased(self) -> dict[int, tuple]:
        """Each leased entry's expiry and owner, to see what a frame changed and whose it was."""
        owner_of = self.core.leases.owner_of
        return {e.id: (e.expires, owner_of(e.id)) for e in self.core.table if e.kind is EntryKind.CLIENT_ALG}

    def _answer(self, messages) -> bytes | None:
        for m in messages:
            if isinstance(m, PacketOut) and m.actions == (Output(self.config.inside_port),):
                frame = m.data[ETH_HEADER_LEN:]
                if frame[9] == 17 and int.from_bytes(frame[20:22], "big") == pcp.SERVER_PORT:
                    return frame[28:]
        return None

    def _response(self, messages) -> pcp.Response | None:
        """The PCP answer; NAT-PMP's are judged by what they changed in the table (_judge) and tallied."""
        answer = self._answer(messages)
        if answer is not None and natpmp.is_natpmp(answer):
            self.results[("natpmp answer", natpmp.decode_response(answer).result.name)] += 1
            return None
        return pcp.decode_response(answer) if answer is not None else None

    def _judge(self, host: Host, before: dict[int, tuple], response: pcp.Response | None) -> None:
        """No frame of ``host`` adds, renews or releases an entry it does not own; READ shows only its own."""
        after, me = self._leased(), self._origin(host)
        for entry_id in before.keys() | after.keys():
            old, new = before.get(entry_id), after.get(entry_id)
            owner = (old or new or (None, None))[1]
            if old != new and owner != me:
                raise InvariantBroken(f"a frame of {me} changed entry {entry_id}: {old} -> {new}")
        if response is not None and isinstance(response.info, pcp.ReadInfo) and response.result == pcp.Result.SUCCESS:
            for record in response.info.entries:
                key = GpnSpace.udp(record.port) if record.port else GpnSpace.ip(record.protocol)
                entry = self.core.table.lookup_in(key, record.global_ip or "", record.global_gpn, record.foreign_ip)
                if record.private_ip != host.ip or (entry and self.core.leases.owner_of(entry.id) != me):
                    raise InvariantBroken(f"READ by {me} showed {record}")

    def check(self) -> None:
        """The table's invariants, and every quota and ownership rule, after every step."""
        core, c = self.core, self.config
        core.table.check_invariants()
        per_origin: Counter = Counter()
        per_mac: Counter = Counter()
        for entry in core.table:
            if entry.kind is EntryKind.CLIENT_ALG:
                owner = core.leases.owner_of(entry.id)
                if owner is None or owner.ip != entry.private_ip:
                    raise InvariantBroken(f"leased entry {entry.id} of {entry.private_ip} is owned by {owner}")
                per_origin[owner] += 1
                per_mac[owner.mac] += 1
        if per_origin and max(per_origin.values()) > c.lease_quota:
            raise InvariantBroken(f"an origin holds {max(per_origin.values())} leases, quota {c.lease_quota}")
        if per_mac and max(per_mac.values()) > c.lease_mac_quota:
            raise InvariantBroken(f"a MAC holds {max(per_mac.values())} leases, quota {c.lease_mac_quota}")
        if core.pool.largest_share() > c.napt_ports_per_host:
            raise InvariantBroken(f"a host holds {core.pool.largest_share()} ports of one global IP")
        if core.leases.largest_definition_share() > c.definition_quota:
            raise InvariantBroken("an origin holds more definitions than its quota")


def _result_name(response: pcp.Response | None, by_opcode: bool) -> str:
    if response is None:
        return "no answer (dropped)"
    result = _name(pcp.Result, response.result, "result")
    return f"{_name(pcp.Opcode, response.opcode, 'opcode')} {result}" if by_opcode else result


def _name(enum, value: int, what: str) -> str:
    try:
        return enum(value).name
    except ValueError:
        return f"{what} {value}"


# ---------------------------------------------------------------------------- ESP/AH


@dataclass
class IpsecFuzzer:
    """Malformed ESP/AH through the agent's inbound processing; none may pass, every honest one must."""

    seed: int
    outcomes: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.sad = SAD()
        self.senders: list[SAState] = []
        for spi, suite in enumerate(all_suites(), start=0x3000):  # every suite, each in a random mode
            mode = self.rng.choice(list(Mode))
            sa = suite.sa(spi, mode, **(TUNNEL if mode is Mode.TUNNEL else {}), random=self.rng.randbytes)
            self.sad.add_inbound(sa)
            self.senders.append(SAState(sa))
        self.sent: list[bytes] = []

    @property
    def malformed(self) -> int:
        return sum(n for (how, _), n in self.outcomes.items() if how != "honest")

    def step(self) -> None:
        """An honest packet now and then (it must pass), else a malformed one (it must not)."""
        sender = self.rng.choice(self.senders)
        packet = processing.encapsulate(_inner(self.rng), sender)
        if self.rng.random() < 0.15 or not self.sent:
            self._deliver(packet, honest=True)
            self.sent.append(packet)
            del self.sent[:-100]
            return
        how = self.rng.choice(("truncated", "bit-flipped", "wrong SPI", "replayed"))
        bad = {"truncated": _truncate, "bit-flipped": _flip, "wrong SPI": _wrong_spi,
               "replayed": lambda p, rng: rng.choice(self.sent)}[how](packet, self.rng)
        self._deliver(bad, honest=False, how=how)

    def _deliver(self, packet: bytes, honest: bool, how: str = "honest") -> None:
        try:
            processing.decapsulate(packet, self.sad)
        except IPsecError as err:
            if honest:
                raise InvariantBroken(f"an honest packet was refused: {err.reason}") from None
            self.outcomes[(how, f"refused: {err.reason}")] += 1
            return
        if not honest:
            raise InvariantBroken(f"a {how} packet was accepted: {packet.hex()}")
        self.outcomes[(how, "accepted")] += 1


def _inner(rng: random.Random) -> bytes:
    payload = rng.randbytes(rng.randint(0, 64))
    return build_udp(plan.client_ip(1), plan.server_ip(1), rng.randint(1, 65535), 9, payload)


def _truncate(packet: bytes, rng: random.Random) -> bytes:
    cut = packet[: rng.randrange(len(packet))]
    if len(cut) >= 20 and rng.random() < 0.5:  # a consistent IP header over the shorter packet
        cut = build_ipv4_header(src=cut[12:16], dst=cut[16:20], protocol=cut[9], payload_len=len(cut) - 20) + cut[20:]
    return cut


def _flip(packet: bytes, rng: random.Random) -> bytes:
    """One to three bits flipped where the packet is protected: ESP/AH and what follows, and
    for AH also the outer addresses and protocol (RFC 4302 3.3.3.1.1: immutable fields)."""
    raw = bytearray(packet)
    covered = list(range(20, len(raw)))
    if raw[9] == IPPROTO_AH:
        covered += [9, *range(12, 20)]
    for bit in rng.sample(range(8 * len(covered)), rng.randint(1, 3)):  # distinct bits: no flip undoes another
        raw[covered[bit // 8]] ^= 1 << bit % 8
    return bytes(raw)


def _wrong_spi(packet: bytes, rng: random.Random) -> bytes:
    at = 20 + (4 if packet[9] == IPPROTO_AH else 0)
    spi = rng.choice((rng.getrandbits(32), 0, 1, 255))
    return packet[:at] + spi.to_bytes(4, "big") + packet[at + 4:]


# ---------------------------------------------------------------------------- command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=100_000, help="lease frames through NatCore (default 100000)")
    p.add_argument("--packets", type=int, default=10_000, help="malformed ESP/AH packets (default 10000)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, printed)")
    p.add_argument("--seconds", type=float, default=600.0, help="stop after this long (default 600)")


def run(args: argparse.Namespace, out=print) -> int:
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    deadline = time.monotonic() + args.seconds
    out(f"natlab fuzz --seed {seed}: {args.frames} lease frames, {args.packets} ESP/AH packets, "
        f"at most {args.seconds:g} s")
    leases, ipsec = LeaseFuzzer(seed), IpsecFuzzer(seed)
    failure = _drive("lease frames", leases, lambda: leases.frames, args.frames, deadline, out)
    if failure is None:
        failure = _drive("ESP/AH packets", ipsec, lambda: ipsec.malformed, args.packets, deadline, out)
    _report(leases, ipsec, out)
    if failure is not None:
        out(f"FAILED (seed {seed}): {failure}")
        return 1
    out("no unhandled exception, no broken invariant")
    return 0


def _drive(what: str, fuzzer, done: Callable[[], int], goal: int, deadline: float, out) -> str | None:
    """Step ``fuzzer`` until ``goal`` units are done or time is up; the failure, if any."""
    start, shown = time.monotonic(), 0
    while done() < goal:
        if time.monotonic() > deadline:
            out(f"{what}: time is up after {done()}")
            break
        try:
            fuzzer.step()
        except InvariantBroken as exc:
            return f"{what} #{done()}: invariant broken: {exc}"
        except Exception as exc:  # noqa: BLE001 - the point: any escape is a finding
            return f"{what} #{done()}: unhandled {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        if done() - shown >= PROGRESS_EVERY:
            shown = done()
            out(f"{what}: {shown}/{goal}, {shown / (time.monotonic() - start):.0f}/s")
    elapsed = time.monotonic() - start
    out(f"{what}: {done()} in {elapsed:.1f} s ({done() / elapsed if elapsed else 0:.0f}/s)")
    return None


def _report(leases: LeaseFuzzer, ipsec: IpsecFuzzer, out) -> None:
    _table("lease frames by kind and answer", leases.results, out)
    counters = {k: v for k, v in leases.core.counters.values.items() if k.startswith(("drop:", "lease_refused:"))}
    _table("NAT counters: drops and refusals", Counter(counters), out)
    _table("ESP/AH packets by kind and outcome", ipsec.outcomes, out)


def _table(title: str, counts: Counter, out) -> None:
    out(f"\n{title}")
    for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        label = "  ".join(key) if isinstance(key, tuple) else key
        out(f"  {n:>8}  {label}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="natlab fuzz", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
