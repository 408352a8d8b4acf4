"""Independent verdicts on captured IPsec packets: scapy's IPsec and tshark judge, our code never does.

The conformance suite must not grade the project's IPsec with the project's
own code. Here scapy (``scapy.layers.ipsec``) verifies every ICV and decrypts
every ESP payload, scapy's checksum routine checks every inner TCP/UDP
checksum, and tshark (Wireshark's dissectors, given the agent's ``esp_sa`` key
file) gives a second, separate opinion. Only the SA parameters come from us.

Where a capture was taken decides what "right" means. The NAT rewrites the
outer IPv4 address only (the source outbound, the destination inbound), so:

- on the peer's wire, after the NAT, every packet must verify as captured: the
  client computed AH's ICV (RFC 4302 section 3.3.3) as if its source were the
  global address, and pre-compensated the TCP/UDP checksum (RFC 793 section
  3.1, RFC 768) for the pseudo-header the peer sees: in transport mode the
  outer addresses, in tunnel mode the inner header's own;
- on the client's wire, before the NAT, AH verifies only ``as_if`` the outer
  address were the global one, and must fail without.

Every check can say "bad": with the client's compensation off, ESP transport
checksums and AH ICVs must come out bad on the peer's wire, and do
(tests/unit/test_oracles.py).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP, defragment, in4_chksum
from scapy.layers.ipsec import AH, ESP, IPSecIntegrityError
from scapy.layers.ipsec import SecurityAssociation as ScapySA
from scapy.utils import PcapReader

from client_agent.ipsec.sa import Mode, Protocol, SecurityAssociation
from conformance import marker
from conformance.evidence import TSHARK_PER_PACKET, tcp_checksum_bad, tshark_payloads_as_data

SCAPY_ENCRYPTION = {"ENCR_NULL": "NULL", "ENCR_AES_CBC": "AES-CBC", "ENCR_AES_GCM_16": "AES-GCM"}
SCAPY_INTEGRITY = {
    "NONE": None, "AUTH_HMAC_MD5_96": "HMAC-MD5-96", "AUTH_HMAC_SHA1_96": "HMAC-SHA1-96",
    "AUTH_HMAC_SHA2_256_128": "SHA2-256-128",
}
TSHARK_FIELDS = (
    "frame.number", "ip.src", "ip.dst", "esp.spi", "esp.icv_good", "esp.icv_bad", "ah.spi",
    "tcp.checksum.status", "udp.checksum.status", "tcp.checksum",
)
AS_IF_FIELDS = frozenset({"src", "dst"})

_T = TypeVar("_T")
_pool: ProcessPoolExecutor | None = None
_TRANSPORTS = {socket.IPPROTO_TCP: ("TCP", 20), socket.IPPROTO_UDP: ("UDP", 8)}  # name, minimum header length
_UDP_CHECKSUM = slice(6, 8)
_TSHARK_TRUE = ("1", "True")
_TSHARK_FALSE = ("0", "False")
_TSHARK_BAD, _TSHARK_GOOD = "0", "1"  # Wireshark's checksum status: 0 bad, 1 good, 2 unverified, 3 not present


def scapy_sa(sa: SecurityAssociation) -> ScapySA:
    """The same SA in scapy's terms; AES-GCM's crypt_key is key + salt, like ours (RFC 4106 section 8.1).

    ``tunnel_header`` is the outer header scapy puts on when it encrypts; when
    it decrypts, only its presence counts: it says the mode.
    """
    tunnel = IP(src=sa.src, dst=sa.dst) if sa.mode is Mode.TUNNEL else None
    try:
        encryption, integrity = SCAPY_ENCRYPTION[sa.encryption], SCAPY_INTEGRITY[sa.integrity]
    except KeyError as err:
        raise ValueError(f"{err.args[0]}: no scapy name for this algorithm") from None
    if sa.protocol is Protocol.AH:
        return ScapySA(AH, spi=sa.spi, auth_algo=integrity, auth_key=sa.auth_key, tunnel_header=tunnel)
    return ScapySA(
        ESP, spi=sa.spi, crypt_algo=encryption, crypt_key=sa.enc_key or None,
        auth_algo=integrity, auth_key=sa.auth_key or None, tunnel_header=tunnel,
    )


@dataclass(frozen=True)
class Verdict:
    """Scapy's verdict on one captured ESP/AH packet.

    ``frame`` is 1-based, as Wireshark numbers frames (the last fragment's frame
    for a reassembled datagram); ``src``/``dst`` are the outer addresses as
    captured. ``decrypted`` says the inner datagram was recovered: ESP only
    when its ICV verified (RFC 4303 section 3.4.4), AH always, since it does not
    encrypt, so a bad AH packet still shows what it carried. The ``inner_*``
    fields are those of the recovered datagram: in transport mode its header is
    the outer one (with the ``as_if`` addresses), in tunnel mode the inner one.
    ``checksum_ok`` is None without TCP/UDP, for a UDP checksum of 0 (none, RFC
    768) and for an inner fragment. ``payload`` is the TCP/UDP payload, or the
    IP payload of anything else, for marker searches. ``reason`` says what failed.
    """

    frame: int
    time: float
    src: str
    dst: str
    protocol: int
    spi: int
    seq: int
    icv_ok: bool
    decrypted: bool
    inner_src: str | None = None
    inner_dst: str | None = None
    inner_protocol: int | None = None
    sport: int | None = None
    dport: int | None = None
    checksum_ok: bool | None = None
    payload: bytes = field(default=b"", repr=False)
    reason: str | None = None
    fragments: int = 1

    @property
    def ok(self) -> bool:
        """ICV good, inner datagram recovered, and no bad checksum inside."""
        return self.icv_ok and self.decrypted and self.checksum_ok is not False


class Verdicts(list[Verdict]):
    """The verdicts of :func:`verify_capture`, with what it did not judge: ``skipped`` counts per reason."""

    def __init__(self, verdicts: Iterable[Verdict], skipped: Counter[str]) -> None:
        super().__init__(verdicts)
        self.skipped = skipped


@dataclass(frozen=True)
class ClearPacket:
    """One cleartext IPv4 packet of a TUN capture; fields as in :class:`Verdict`."""

    frame: int
    time: float
    src: str
    dst: str
    protocol: int
    sport: int | None
    dport: int | None
    checksum_ok: bool | None
    payload: bytes = field(default=b"", repr=False)


class _Frame(NamedTuple):
    number: int
    time: float
    datagram: bytes  # the IPv4 datagram, cut to its total length (no link padding)
    fragments: int = 1
    ip: IP | None = None  # scapy's parse of ``datagram`` down to its ESP/AH header, when one was made


class _Carried(NamedTuple):
    src: str
    dst: str
    protocol: int
    sport: int | None
    dport: int | None
    checksum_ok: bool | None
    payload: bytes


def verify_capture(
    pcap: Path, sas: Iterable[SecurityAssociation], *, as_if: Mapping[str, str] | None = None
) -> Verdicts:
    """Scapy's verdict on every ESP/AH packet of ``pcap`` whose SPI and protocol match one of ``sas``.

    ``as_if`` ({"src": ip} and/or {"dst": ip}) replaces the outer addresses
    (and the header checksum) before verifying, for captures taken before the
    NAT; it applies to every matched packet, so pass the SAs of one direction.
    Fragmented datagrams are reassembled by scapy first (RFC 4303 section
    3.4.1: IPsec processes whole datagrams). Packets not judged are counted in
    ``skipped``: not IPv4, not ESP or AH, unknown SPI, incomplete fragments.
    """
    by_spi = _by_spi(sas)
    if as_if and not set(as_if) <= AS_IF_FIELDS:
        raise ValueError(f"as_if={dict(as_if)!r}: only {sorted(AS_IF_FIELDS)} can be substituted")
    skipped: Counter[str] = Counter()
    verdicts = []
    for frame in _whole_datagrams(_frames(pcap, skipped), skipped):
        verdict = _judge(frame, by_spi, as_if or {}, skipped)
        if verdict is not None:
            verdicts.append(verdict)
    return Verdicts(sorted(verdicts, key=lambda v: v.frame), skipped)


def check_cleartext_capture(pcap: Path) -> list[ClearPacket]:
    """What a TUN capture (LINKTYPE_RAW, cleartext IPv4) holds: addresses, ports and checksum verdicts.

    Shows what the client's own stack sent and what it was handed back, judged
    by scapy against the packet's own addresses.
    """
    return [
        ClearPacket(frame.number, frame.time, *_carried(frame.datagram))
        for frame in _frames(pcap, Counter())
    ]


def transport_checksum_ok(datagram: bytes) -> bool | None:
    """Does the TCP/UDP checksum of the IPv4 ``datagram`` verify against its own pseudo-header?

    The receiver's check of RFC 1071 section 1: the one's-complement sum over
    pseudo-header (RFC 793 section 3.1, RFC 768) and segment, checksum included,
    must be all ones. So 0x0000 and 0xFFFF are equally right where the computed
    value is zero (RFC 1624 section 3). Scapy's ``in4_chksum`` (what its TCP and
    UDP layers rebuild their checksums with) computes it over the exact
    captured bytes, so scapy's re-encoding of TCP options cannot get in the way.
    None: not TCP/UDP, a fragment, or a UDP checksum of 0 (none sent, RFC 768).
    """
    return _checksum_ok(_header(datagram), datagram)


def _checksum_ok(header: IP, datagram: bytes) -> bool | None:
    if header.proto not in _TRANSPORTS or _is_fragment(header):
        return None
    segment = datagram[header.ihl * 4 : header.len]
    if len(segment) < _TRANSPORTS[header.proto][1]:
        return False
    if header.proto == socket.IPPROTO_UDP and segment[_UDP_CHECKSUM] == b"\x00\x00":
        return None
    return in4_chksum(header.proto, header, segment) == 0


def _header(datagram: bytes) -> IP:
    """Scapy's parse of the IPv4 header alone: cheaper than the whole datagram, whose bytes stay as captured."""
    return IP(datagram[: (datagram[0] & 0x0F) * 4])


def _is_fragment(header: IP) -> bool:
    return bool(header.flags.MF or header.frag)


def _by_spi(sas: Iterable[SecurityAssociation]) -> dict[tuple[int, int], ScapySA]:
    by_spi: dict[tuple[int, int], ScapySA] = {}
    for sa in sas:
        key = (int(sa.protocol), sa.spi)
        if key in by_spi:
            raise ValueError(f"two {sa.protocol.name} SAs with SPI 0x{sa.spi:08x}: a capture cannot tell them apart")
        by_spi[key] = scapy_sa(sa)
    return by_spi


def _frames(pcap: Path, skipped: Counter[str]) -> Iterator[_Frame]:
    """Every IPv4 datagram of ``pcap`` (Ethernet, LINKTYPE_RAW, Linux cooked... as scapy reads them)."""
    with PcapReader(str(pcap)) as reader:
        for number, packet in enumerate(_dissected_to_ipsec(reader), start=1):
            ip = packet.getlayer(IP)
            if ip is None:
                skipped["not IPv4"] += 1
                continue
            datagram = raw(ip)[: ip.len]
            if not marker.is_marker(datagram):  # the capture's own proof of life, no traffic
                yield _Frame(number, float(packet.time), datagram, ip=ip)


def _dissected_to_ipsec(reader: PcapReader) -> Iterator:
    """The capture's packets, each dissected no further than an AH header (an ESP header ends dissection
    anyway): what AH protects is read from the bytes later, once, by the SA. The judges reuse this parse;
    parsing each datagram twice more had been a fifth of a cell's judging time (py-spy)."""
    while True:
        try:
            yield reader.read_packet(stop_dissection_after=AH)
        except EOFError:
            return


def _whole_datagrams(frames: Iterable[_Frame], skipped: Counter[str]) -> Iterator[_Frame]:
    """Unfragmented datagrams as they come, then the fragmented ones reassembled by scapy's ``defragment``."""
    pieces: dict[tuple, list[tuple[int, _Frame]]] = defaultdict(list)
    for frame in frames:
        header = frame.ip if frame.ip is not None else _header(frame.datagram)
        if _is_fragment(header):
            pieces[(header.id, header.src, header.dst, header.proto)].append((header.frag, frame))
        else:
            yield frame
    for group in pieces.values():
        whole = _reassemble(group)
        if whole is None:
            skipped["incomplete fragments"] += len(group)
        else:
            yield whole


def _reassemble(group: list[tuple[int, _Frame]]) -> _Frame | None:
    # Sorted by offset: scapy reassembles when it meets the last fragment, and gives up on an order it did not expect.
    result = defragment([IP(frame.datagram) for _, frame in sorted(group, key=lambda item: item[0])])
    if len(result) != 1 or _is_fragment(result[0]):
        return None
    last = max((frame for _, frame in group), key=lambda frame: frame.number)
    return _Frame(last.number, last.time, raw(result[0]), len(group))


def _judge(frame: _Frame, by_spi: dict[tuple[int, int], ScapySA], as_if: Mapping[str, str],
           skipped: Counter[str]) -> Verdict | None:
    ip = frame.ip if frame.ip is not None else IP(frame.datagram)
    header = ip.payload
    if not isinstance(header, (ESP, AH)):
        skipped["not ESP or AH"] += 1
        return None
    sa = by_spi.get((ip.proto, header.spi))
    if sa is None:
        skipped["unknown SPI"] += 1
        return None
    datagram = _substitute(frame.datagram, as_if) if as_if else frame.datagram
    seen = dict(frame=frame.number, time=frame.time, src=ip.src, dst=ip.dst, protocol=ip.proto, spi=header.spi,
                seq=header.seq, fragments=frame.fragments)
    name = "AH" if isinstance(header, AH) else "ESP"
    try:
        inner, icv_ok = _unprotect(sa, datagram, readable=name == "AH")
    except Exception as err:  # whatever scapy trips on, the packet gets a verdict, not the whole run
        return Verdict(**seen, icv_ok=False, decrypted=False, reason=f"scapy cannot unprotect it: {err!r}")
    failures = [] if icv_ok else [f"{name} ICV does not verify" + (f" as if {_dotted(as_if)}" if as_if else "")]
    return _verdict(seen, icv_ok, inner, failures)


def _verdict(seen: dict, icv_ok: bool, inner: bytes | None, failures: list[str]) -> Verdict:
    """The verdict on what was (or was not) recovered, with every failure in ``reason``."""
    if inner is None:
        return Verdict(**seen, icv_ok=icv_ok, decrypted=False, reason="; ".join(failures))
    if not inner or inner[0] >> 4 != 4:
        failures.append("the inner packet is not IPv4")
        return Verdict(**seen, icv_ok=icv_ok, decrypted=True, payload=inner, reason="; ".join(failures))
    carried = _carried(inner)
    if carried.checksum_ok is False:
        failures.append(f"inner {_TRANSPORTS[carried.protocol][0]} checksum does not verify for "
                        f"{carried.src} > {carried.dst}")
    return Verdict(
        **seen, icv_ok=icv_ok, decrypted=True, inner_src=carried.src, inner_dst=carried.dst,
        inner_protocol=carried.protocol, sport=carried.sport, dport=carried.dport,
        checksum_ok=carried.checksum_ok, payload=carried.payload, reason="; ".join(failures) or None,
    )


def _unprotect(sa: ScapySA, datagram: bytes, *, readable: bool) -> tuple[bytes | None, bool]:
    """Scapy's unprotected datagram (or None) and whether the ICV verified.

    ``readable``: AH does not encrypt (RFC 4302 section 1), so when its ICV fails
    what it carries is still read, without verifying. ``decrypt`` mutates its
    argument, so each call gets a fresh parse; the result goes back to bytes,
    since scapy leaves an AH tunnel's inner packet undissected (it binds AH to
    IP for next header 0, not 4).
    """
    try:
        return raw(sa.decrypt(IP(datagram))), True
    except IPSecIntegrityError:
        return (raw(sa.decrypt(IP(datagram), verify=False)) if readable else None), False


def _substitute(datagram: bytes, as_if: Mapping[str, str]) -> bytes:
    """The datagram with its outer addresses replaced and its header checksum recomputed by scapy (RFC 791)."""
    header = _header(datagram)
    for name, address in as_if.items():
        setattr(header, name, address)
    del header.chksum
    ihl = header.ihl * 4
    return raw(header)[:ihl] + datagram[ihl:]


def _carried(datagram: bytes) -> _Carried:
    """Addresses, ports, checksum verdict and payload of an IPv4 datagram."""
    header = _header(datagram)
    body = datagram[header.ihl * 4 : header.len]
    sport = dport = None
    payload = body
    if header.proto in _TRANSPORTS and not _is_fragment(header) and len(body) >= _TRANSPORTS[header.proto][1]:
        segment = (TCP if header.proto == socket.IPPROTO_TCP else UDP)(body)
        sport, dport = segment.sport, segment.dport
        payload = body[segment.dataofs * 4 if isinstance(segment, TCP) else 8 :]
    return _Carried(header.src, header.dst, header.proto, sport, dport, _checksum_ok(header, datagram), payload)


def _dotted(as_if: Mapping[str, str]) -> str:
    return ", ".join(f"{name}={address}" for name, address in sorted(as_if.items()))


def tshark_verdicts(pcap: Path, keyfile_dir: Path) -> list[dict[str, str]]:
    """tshark's view of ``pcap`` with an ``esp_sa`` key file in ``keyfile_dir``: one dict of TSHARK_FIELDS per frame.

    ESP is decrypted and its ICV checked (RFC 4303 section 3.4.4), TCP/UDP
    checksums verified; with ``occurrence=l`` the fields of an ESP tunnel are
    the inner packet's.
    """
    command = ["tshark", "-n", "-r", str(pcap), *TSHARK_PER_PACKET, *tshark_payloads_as_data(),
               "-o", "esp.enable_encryption_decode:TRUE",
               "-o", "esp.enable_authentication_check:TRUE", "-o", "tcp.check_checksum:TRUE",
               "-o", "udp.check_checksum:TRUE", "-T", "fields", "-E", "separator=/t", "-E", "occurrence=l"]
    for name in TSHARK_FIELDS:
        command += ["-e", name]
    env = {**os.environ, "WIRESHARK_CONFIG_DIR": str(keyfile_dir)}
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    return [dict(zip(TSHARK_FIELDS, line.split("\t"), strict=True)) for line in out.splitlines()]


@dataclass(frozen=True)
class TsharkSummary:
    """Counts of tshark's verdicts. ``esp_unverified``: ESP frames it had no key for;
    ``checksum_unverified``: TCP/UDP checksums it neither passed nor failed."""

    esp_icv_good: int = 0
    esp_icv_bad: int = 0
    esp_unverified: int = 0
    tcp_checksum_good: int = 0
    tcp_checksum_bad: int = 0
    udp_checksum_good: int = 0
    udp_checksum_bad: int = 0
    checksum_unverified: int = 0


def tshark_summary(rows: Iterable[Mapping[str, str]]) -> TsharkSummary:
    """Count :func:`tshark_verdicts` rows; a TCP checksum of 0xFFFF that tshark calls bad counts as good.

    tshark computes 0x0000 and compares literally, but 0xFFFF is the other
    one's-complement zero and every receiver accepts it (RFC 1624 section 3).
    """
    counts: Counter[str] = Counter()
    for row in rows:
        if row.get("esp.spi"):
            counts[_icv_verdict(row.get("esp.icv_good", ""))] += 1
        for proto in ("tcp", "udp"):
            status = row.get(f"{proto}.checksum.status", "")
            if proto == "tcp" and status == _TSHARK_BAD and not tcp_checksum_bad(status, row.get("tcp.checksum", "")):
                status = _TSHARK_GOOD
            if status:
                counts[_checksum_verdict(proto, status)] += 1
    return TsharkSummary(**counts)


def _icv_verdict(icv_good: str) -> str:
    if icv_good in _TSHARK_TRUE:
        return "esp_icv_good"
    return "esp_icv_bad" if icv_good in _TSHARK_FALSE else "esp_unverified"


def _checksum_verdict(proto: str, status: str) -> str:
    return {_TSHARK_GOOD: f"{proto}_checksum_good", _TSHARK_BAD: f"{proto}_checksum_bad"}.get(
        status, "checksum_unverified")


def read_in_parallel(readings: Mapping[str, Callable[[], _T]]) -> dict[str, _T]:
    """Independent readings of capture files (each a picklable call, e.g. a ``functools.partial`` of
    :func:`verify_capture`), one per core, the first-named first: scapy spends tens of seconds per capture
    in Python, so a cell's captures read side by side take about half the time they take in a row.

    The workers come from a fork server that has imported this module (scapy included) once, not from a
    fork of the caller, which holds a testbed, its threads and its locks."""
    global _pool
    if _pool is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        _pool = ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=context)
    futures = {name: _pool.submit(reading) for name, reading in readings.items()}
    return {name: future.result() for name, future in futures.items()}
