"""Packets per second of the sans-IO core: how fast one SA protects and unprotects one packet size.

Not a test: ``natlab bench ipsec`` reports these figures. Only the core is
timed (an SA pair, one packet size, no I/O), so the figures bound what a
datapath built around it can do on one core.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from client_agent.ipsec.processing import decapsulate, encapsulate
from client_agent.ipsec.sa import Mode, SAState
from client_agent.ipsec.sad import SAD
from client_agent.ipsec.suites import suite
from netwire.ipv4 import IPPROTO_UDP, build_ipv4_header

# Short names for the suites the issue asks figures for; any Suite.name works too.
KINDS = {
    "esp-aes-gcm": "esp:AES_GCM_16-128:NONE",
    "esp-aes-cbc-sha1": "esp:AES_CBC-128:HMAC_SHA1_96",
    "esp-null-sha1": "esp:NULL:HMAC_SHA1_96",
    "ah-sha256": "ah:HMAC_SHA2_256_128",
}
_BATCH = 512


def packets_per_second(
    sa_kind: str = "esp-aes-gcm", size: int = 1400, seconds: float = 1.0, mode: Mode | str = Mode.TRANSPORT,
) -> dict[str, float | int | str]:
    """Time :func:`encapsulate`, then :func:`decapsulate` (SAD lookup included), of ``size``-byte IPv4/UDP packets.

    ``sa_kind`` is a key of :data:`KINDS` or a suite name; each direction runs
    for about ``seconds``. Returns the suite, mode, sizes, packets per second
    and cleartext Mbit/s each way.
    """
    chosen = suite(KINDS.get(sa_kind, sa_kind))
    tunnel = Mode(mode) is Mode.TUNNEL
    sa = chosen.sa(0x1000, Mode(mode), src="192.0.2.1" if tunnel else None, dst="192.0.2.2" if tunnel else None)
    packet, sender = _udp_packet(size), SAState(sa)

    def protect_batch() -> None:
        for _ in range(_BATCH):
            encapsulate(packet, sender)

    # Every received packet needs a new sequence number: replay one batch through a fresh SAD each time.
    batch = [encapsulate(packet, sender) for _ in range(_BATCH)]

    def unprotect_batch() -> None:
        sad = SAD()
        sad.add_inbound(sa)
        for wire in batch:
            decapsulate(wire, sad)

    encapsulate_pps = _BATCH * _rate(protect_batch, seconds)
    decapsulate_pps = _BATCH * _rate(unprotect_batch, seconds)
    return {
        "suite": chosen.name,
        "mode": str(mode),
        "size": size,
        "wire_size": len(batch[0]),
        "encapsulate_pps": round(encapsulate_pps),
        "decapsulate_pps": round(decapsulate_pps),
        "encapsulate_mbps": round(encapsulate_pps * size * 8 / 1e6, 1),
        "decapsulate_mbps": round(decapsulate_pps * size * 8 / 1e6, 1),
    }


def _rate(run: Callable[[], None], seconds: float) -> float:
    """Calls of ``run`` per second, over at least ``seconds``."""
    calls, start = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls / elapsed


def _udp_packet(size: int) -> bytes:
    """An IPv4/UDP packet of ``size`` bytes (at least 28); the UDP checksum is 0, "none" (RFC 768)."""
    if size < 28:
        raise ValueError(f"size={size}: an IPv4/UDP packet has at least 28 bytes")
    udp = struct.pack("!HHHH", 4000, 5000, size - 20, 0) + bytes(size - 28)
    return build_ipv4_header(src="192.0.2.1", dst="192.0.2.2", protocol=IPPROTO_UDP, payload_len=len(udp)) + udp
