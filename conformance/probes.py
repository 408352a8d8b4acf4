"""Tiny traffic probes run inside Mininet hosts (``python -m conformance.probes``).

Plain kernel sockets only, so what leaves a host is what any application
would send. Each probe prints one JSON line saying what it did.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct

from netwire import plan


def udp(dst: str, dport: int, sport: int, count: int, wait: float) -> dict:
    """Send ``count`` datagrams and count replies."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if sport:
            s.bind(("", sport))
        s.settimeout(wait)
        for i in range(count):
            s.sendto(f"natlab probe {i}".encode(), (dst, dport))
        replies = 0
        try:
            while True:
                s.recvfrom(2048)
                replies += 1
        except (TimeoutError, ConnectionRefusedError):
            pass
        return {"sent": count, "replies": replies, "sport": s.getsockname()[1]}


def tcp_syn(dst: str, dport: int, wait: float) -> dict:
    """Try one TCP connection."""
    with socket.socket() as s:
        s.settimeout(wait)
        try:
            s.connect((dst, dport))
            return {"connected": True}
        except OSError as exc:
            return {"connected": False, "error": type(exc).__name__}


def raw(dst: str, proto: int, count: int, spi: int = 0x4E415401, reply_spi: int = 0) -> dict:
    """ESP (50) or AH (51) packets with SPI ``spi`` (RFC 4303 2.1, RFC 4302 2); the body carries
    ``reply_spi``, the SPI the reflector should answer to (it stands in for IPsec's negotiation)."""
    body = struct.pack("!I", reply_spi) + b"natlab-probe" + b"\x00" * 16
    if proto == 51:  # AH: next header, payload len, reserved, SPI, seq, 12-byte ICV
        payload = struct.pack("!BBHII", 59, 4, 0, spi, 1) + b"\x00" * 12 + body
    else:
        payload = struct.pack("!II", spi, 1) + body
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, proto) as s:
        for _ in range(count):
            s.sendto(payload, (dst, 0))
    return {"sent": count, "proto": proto, "spi": spi}


def forge_ah(dst: str, spi: int, icv_len: int, seq: int, count: int, mark: int, dport: int, text: str,
             inner_src: str = "", inner_dst: str = "") -> dict:
    """``count`` AH packets for SA ``spi`` whose ICV is zeros (RFC 4302 2.6), sequence numbers from ``seq``.

    A receiver that verifies ICVs drops them all (RFC 4302 3.4.3); one that does not hands
    a UDP datagram carrying ``text`` to port ``dport`` up its stack. With ``inner_src``/``inner_dst``
    the datagram is tunnelled (next header 4). ``mark`` (SO_MARK) routes like an agent's
    own raw socket, around its TUN device.
    """
    from conformance.marker import inet_checksum

    udp = struct.pack("!HHHH", 9, dport, 8 + len(text), 0) + text.encode()  # checksum 0: none (RFC 768)
    inner, next_header = udp, 17
    if inner_src:
        inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(inner_src),
                            socket.inet_aton(inner_dst)) + udp
        inner = inner[:10] + struct.pack("!H", inet_checksum(inner[:20])) + inner[12:]
        next_header = 4
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, 51) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        for i in range(count):
            ah = struct.pack("!BBHII", next_header, (12 + icv_len) // 4 - 2, 0, spi, seq + i) + bytes(icv_len)
            s.sendto(ah + inner, (dst, 0))
    return {"requested": count, "spi": spi, "seq": seq}


def isakmp(dst: str, cookie: int, count: int, wait: float) -> dict:
    """ISAKMP-shaped datagrams from UDP port 500 with initiator cookie ``cookie`` (RFC 2408 3.1);
    counts the replies that carry the same cookie."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", 500))
        s.settimeout(wait)
        for _ in range(count):
            s.sendto(cookie.to_bytes(8, "big") + bytes(8) + b"natlab-isakmp", (dst, 500))
        replies = 0
        try:
            while True:
                data, _ = s.recvfrom(2048)
                replies += data[:8] == cookie.to_bytes(8, "big")
        except (TimeoutError, ConnectionRefusedError):
            pass
    return {"sent": count, "replies": replies, "cookie": cookie}


def reflect(seconds: float) -> dict:
    """Answer ESP/AH probes with the SPI they name, and ISAKMP probes with their cookie, for ``seconds``."""
    import select
    import time

    esp = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
    ah = socket.socket(socket.AF_INET, socket.SOCK_RAW, 51)
    ike = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ike.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ike.bind(("", 500))
    answered = {"esp": 0, "ah": 0, "isakmp": 0}
    deadline = time.monotonic() + seconds
    with esp, ah, ike:
        while (left := deadline - time.monotonic()) > 0:
            for sock in select.select([esp, ah, ike], [], [], left)[0]:
                data, (src, port) = sock.recvfrom(4096)
                if sock is ike:
                    ike.sendto(data[:8] + bytes(8) + b"natlab-reply", (src, port))
                    answered["isakmp"] += 1
                    continue
                ihl = (data[0] & 0x0F) * 4
                payload = data[ihl:]
                proto = 51 if sock is ah else 50
                body = payload[24:] if proto == 51 else payload[8:]
                if len(body) < 4 or not int.from_bytes(body[:4], "big"):
                    continue
                raw(src, proto, 1, spi=int.from_bytes(body[:4], "big"))
                answered["ah" if proto == 51 else "esp"] += 1
    return answered


def lease(opcode: str, fields: str) -> dict:
    """One lease-protocol request to the gateway (JSON ``fields``), the decoded answer back."""
    import json as _json
    import os

    from netwire import pcp

    args = _json.loads(fields)
    client_ip, server = args.pop("client_ip"), args.pop("server", plan.GATEWAY_IP)
    lifetime = args.pop("lifetime", 600)
    nonce = bytes.fromhex(args.pop("nonce")) if "nonce" in args else os.urandom(12)
    kind = {"DEFINE": pcp.GpnDefinition, "LEASE": pcp.LeaseInfo, "MAP": pcp.MapInfo, "PEER": pcp.PeerInfo,
            "READ": pcp.ReadInfo}[opcode]
    info = kind(nonce=nonce, **args)
    request = pcp.encode_request(pcp.Request(pcp.Opcode[opcode], lifetime, client_ip, info))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(request, (server, pcp.SERVER_PORT))
        try:
            response = pcp.decode_response(s.recv(2048))
        except TimeoutError:
            return {"answered": False}
    info = response.info
    return {"answered": True, "result": pcp.Result(response.result).name, "lifetime": response.lifetime,
            "epoch": response.epoch, "nonce": nonce.hex(),
            "info": {k: (v.hex() if isinstance(v, bytes) else v) for k, v in vars(info).items()
                     if not isinstance(v, tuple)} if info is not None else None,
            "entries": [vars(e) for e in getattr(info, "entries", ())]}


def udp_refused(dst: str, dport: int, wait: float) -> dict:
    """Send to a closed port on a connected socket: ECONNREFUSED means the ICMP
    port-unreachable came back and the kernel matched its quoted header to us."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        s.connect((dst, dport))
        s.send(b"is anyone there")
        try:
            s.recv(100)
            return {"refused": False, "reply": True}
        except ConnectionRefusedError:
            return {"refused": True}
        except TimeoutError:
            return {"refused": False, "reply": False}


def tcp_sink(port: int, seconds: float) -> dict:
    """Accept and close TCP connections for ``seconds`` (the far end of connect-rate)."""
    import time

    accepted = 0
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", port))
        s.listen(1024)
        s.settimeout(0.2)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                conn, _ = s.accept()
            except TimeoutError:
                continue
            conn.close()
            accepted += 1
    return {"accepted": accepted}


def connect_rate(dst: str, dport: int, seconds: float) -> dict:
    """New TCP connections per second, one at a time, each from a fresh source port."""
    import time

    done = failed = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        with socket.socket() as s:
            s.settimeout(2)
            try:
                s.connect((dst, dport))
                done += 1
            except OSError:
                failed += 1
    elapsed = time.monotonic() - start
    return {"connections": done, "failed": failed, "seconds": round(elapsed, 3), "per_second": done / elapsed}


def lease_flood(client_ip: str, seconds: float) -> dict:
    """Sequential LEASE allocate + release round trips to the gateway for ``seconds``."""
    import os
    import time

    from netwire import pcp

    nonce, ops, lost = os.urandom(12), 0, 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            spi = int.from_bytes(os.urandom(4), "big") | 0x100
            for lifetime in (600, 0):
                info = pcp.LeaseInfo(nonce, 50, spi, spi, None, plan.server_ip(1))
                s.sendto(pcp.encode_request(pcp.Request(pcp.Opcode.LEASE, lifetime, client_ip, info)), plan.LEASE_SERVER)
                try:
                    s.recv(2048)
                    ops += 1
                except TimeoutError:
                    lost += 1
    return {"operations": ops, "lost": lost}


def esp_flood(dst: str, spi: int, seconds: float) -> dict:
    """ESP packets to ``dst`` with SPI ``spi`` as fast as one socket sends, for ``seconds``."""
    import time

    payload = struct.pack("!II", spi, 1) + b"\x00" * 56
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, 50) as s:
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            for _ in range(100):
                s.sendto(payload, (dst, 0))
            sent += 100
    return {"sent": sent}


def esp_count(seconds: float) -> dict:
    """Count ESP packets received for ``seconds``."""
    import time

    received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, 50) as s:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                s.recv(4096)
                received += 1
            except TimeoutError:
                break
    return {"received": received}


def lease_fuzz(client_ip: str, count: int, seed: int = 7) -> dict:
    """``count`` mutated lease requests (bit flips, truncation, junk) to the gateway, bounded."""
    import random
    import time

    from netwire import pcp

    rng = random.Random(seed)
    infos: list[pcp.Info] = [pcp.LeaseInfo(bytes(12), 50, None, None, None, plan.server_ip(1)),
             pcp.GpnDefinition(bytes(12), 50, 0, 0, None, 0, 32, 256, 0xFFFFFFFF, 0),
             pcp.MapInfo(bytes(12), 17, 7000, 0, None), pcp.ReadInfo(bytes(12), ())]
    opcodes = [pcp.Opcode.LEASE, pcp.Opcode.DEFINE, pcp.Opcode.MAP, pcp.Opcode.READ]
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for i in range(count):
            k = rng.randrange(len(infos))
            raw = bytearray(pcp.encode_request(pcp.Request(opcodes[k], rng.choice([0, 1, 600, 2**32 - 1]),
                                                           client_ip, infos[k])))
            for _ in range(rng.randrange(4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            raw = raw[: rng.randrange(len(raw) + 1)] + rng.randbytes(rng.randrange(3))
            s.sendto(bytes(raw), plan.LEASE_SERVER)
            if i % 50 == 0:
                time.sleep(0.01)  # bounded rate: the test is about input, not load
            try:
                while s.recv(2048):
                    answered += 1
            except BlockingIOError:
                pass
    return {"sent": count, "answered": answered}


def udp_echo(ip: str, port: int, seconds: float, log: str) -> dict:
    """Echo every datagram to its sender for ``seconds``, logging its source and text to ``log`` (JSON lines)."""
    import time

    echoed = 0
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, open(log, "a") as out:
        s.bind((ip, port))
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, source = s.recvfrom(4096)
            except TimeoutError:
                break
            out.write(json.dumps({"src": source[0], "sport": source[1], "text": data.decode(errors="replace")}) + "\n")
            out.flush()
            s.sendto(data, source)
            echoed += 1
    return {"echoed": echoed}


def first_reply(dst: str, dport: int, interval: float, timeout: float) -> dict:
    """Send a datagram every ``interval`` s until one is answered: the wall-clock time of the first answer
    (the benchmarks' "first packet through": started once the agent routes the path, an answer is protected)."""
    import time

    deadline = time.monotonic() + timeout
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(interval)
        while time.monotonic() < deadline:
            s.sendto(f"natlab first {sent}".encode(), (dst, dport))
            sent += 1
            try:
                s.recvfrom(2048)
            except TimeoutError:
                continue
            except ConnectionRefusedError:  # an ICMP error came back at once: keep the pace
                time.sleep(interval)
                continue
            return {"first_reply": time.time(), "sent": sent}
    return {"first_reply": None, "sent": sent}


def marker(intfs: str, token: str) -> dict:
    """Send the capture marker (:mod:`conformance.marker`) out of each of ``intfs`` (comma-separated),
    framed for its link type; the token names the interface."""
    import fcntl

    from conformance import marker as mk

    siocgifhwaddr, arphrd_ether, eth_p_ip = 0x8927, 1, 0x0800
    links = {}
    for intf in intfs.split(","):
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
            ifreq = fcntl.ioctl(s.fileno(), siocgifhwaddr, struct.pack("256s", intf.encode()[:15]))
            family, mac = int.from_bytes(ifreq[16:18], "little"), ifreq[18:24]  # struct sockaddr, host order
            if family == arphrd_ether:
                s.sendto(mk.ethernet_frame(mac, f"{token}:{intf}"), (intf, 0))
                links[intf] = "ethernet"
                continue
        with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0) as s:  # TUN: the datagram is the frame
            s.sendto(mk.datagram(f"{token}:{intf}"), (intf, eth_p_ip))
        links[intf] = "raw"
    return {"sent": links}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m conformance.probes", description=__doc__)
    sub = p.add_subparsers(dest="probe", required=True)

    def probe(name, func, *args, **options):
        a = sub.add_parser(name, help=func.__doc__.splitlines()[0] if func.__doc__ else None)
        for arg in args:
            a.add_argument(arg, type=int if arg in ("dport", "port", "proto") else str)
        for option, default in options.items():
            a.add_argument(f"--{option.replace('_', '-')}", dest=option, type=type(default), default=default)
        a.set_defaults(func=func)

    probe("udp", udp, "dst", "dport", sport=0, count=3, wait=0.5)
    probe("tcp-syn", tcp_syn, "dst", "dport", wait=1.0)
    probe("raw", raw, "dst", "proto", count=3, spi=0x4E415401, reply_spi=0)
    probe("isakmp", isakmp, "dst", count=1, wait=1.0, cookie=1)
    probe("reflect", reflect, seconds=10.0)
    probe("lease", lease, "opcode", "fields")
    probe("lease-flood", lease_flood, "client_ip", seconds=3.0)
    probe("lease-fuzz", lease_fuzz, "client_ip", count=1000, seed=7)
    probe("esp-flood", esp_flood, "dst", spi=0x1000, seconds=3.0)
    probe("esp-count", esp_count, seconds=4.0)
    probe("udp-refused", udp_refused, "dst", "dport", wait=2.0)
    probe("tcp-sink", tcp_sink, "port", seconds=10.0)
    probe("connect-rate", connect_rate, "dst", "dport", seconds=3.0)
    probe("marker", marker, "intfs", "token")
    probe("forge-ah", forge_ah, "dst", spi=0, icv_len=12, seq=1, count=3, mark=1, dport=9, text="",
          inner_src="", inner_dst="")
    probe("udp-echo", udp_echo, "ip", "port", seconds=60.0, log="/dev/null")
    probe("first-reply", first_reply, "dst", "dport", interval=0.01, timeout=20.0)
    args = vars(p.parse_args())
    func = args.pop("func")
    args.pop("probe")
    print(json.dumps(func(**args)))


if __name__ == "__main__":
    main()
