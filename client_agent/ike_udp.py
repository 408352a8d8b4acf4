"""A thin shell around the sans-IO IKEv2 endpoint: one UDP socket on port 500, a select loop, key files.

Used by the interop tests with strongSwan and by hand::

    python -m client_agent.ike_udp initiate --local 10.0.0.1 --remote 203.0.113.100 \\
        --id h1.natlab --remote-id srv1.natlab --psk-file psk.txt --keys DIR
    python -m client_agent.ike_udp respond --local 203.0.113.100 --id srv1.natlab --psk-file psk.txt --keys DIR

Every event is printed as one JSON line on stdout (``{"event": "IkeEstablished", ...}``), the first
one ``{"event": "Listening"}`` once the sockets are bound; negotiated
keys go to ``DIR/ikev2_decryption_table`` and ``DIR/esp_sa`` (Wireshark's UATs) as they are made.
The initiator exits after ``--hold`` seconds established, deleting its IKE SA first; the responder
after ``--sas`` IKE SAs have come and gone, or at ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from client_agent.ike.config import IkeConfig
from client_agent.ike.endpoint import IkeEndpoint
from client_agent.ike.events import ChildEstablished, Event, IkeClosed, IkeEstablished, describe
from client_agent.ike.keyfile import FILENAME as IKE_KEYS
from client_agent.ike.keyfile import ikev2_line, security_associations
from client_agent.ike.registry import IKE_PORT, NATT_PORT
from client_agent.ipsec.keyfile import FILENAME as ESP_KEYS
from client_agent.ipsec.keyfile import esp_sa_file
from client_agent.ipsec.udpencap import NON_ESP_MARKER


def build_config(args: argparse.Namespace) -> IkeConfig:
    if not args.psk and not args.psk_file:
        raise SystemExit("need --psk or --psk-file")
    psk = Path(args.psk_file).read_bytes().strip() if args.psk_file else args.psk.encode()
    esp = args.esp if args.esp is not None else ([] if args.ah else ["aes128gcm16"])
    return IkeConfig.build(
        local_id=args.id, remote_id=args.remote_id, psk=psk, ike=tuple(args.ike or ["aes128-sha256-modp2048"]),
        esp=tuple(esp),
        ah=tuple(args.ah), local_ts=tuple(args.local_ts or [args.local]),
        remote_ts=tuple(args.remote_ts or (["0.0.0.0/0"] if args.role == "respond" else [args.remote])),
        mode=args.mode, natd=not args.no_natd,
        natd_source=(args.natd_address, IKE_PORT) if args.natd_address else None,
        child_rekey=args.child_rekey, ike_rekey=args.ike_rekey, own_ike_rekeys=bool(args.next_spi),
    )


REKEYED = ("rekeyed", "rekey_collision")  # closed for a successor, or the redundant one of a collision (2.8.2)


class Shell:
    """Moves datagrams between the sockets and the endpoint and writes key files.

    Port 4500 carries IKE only (with the non-ESP marker), because strongSwan's
    libipsec fakes a NAT and moves IKE there after IKE_SA_INIT; ESP-in-UDP is
    dropped and counted (NAT-T's data path is issue 15's).
    """

    def __init__(self, endpoint: IkeEndpoint, sock: socket.socket, keys: Path | None,
                 natt: socket.socket | None = None) -> None:
        self.endpoint, self.sock, self.natt, self.keys = endpoint, sock, natt, keys
        self.ike_lines: list[str] = []
        self.children: list = []
        self.established = self.closed = self.esp_in_udp = 0
        self.natt_peers: set[tuple[str, int]] = set()

    def step(self, until: float) -> None:
        timer = self.endpoint.get_timer()
        wait = max(0.0, min(until, timer if timer is not None else until) - time.monotonic())
        sockets = [s for s in (self.sock, self.natt) if s is not None]
        readable, _, _ = select.select(sockets, [], [], wait)
        now = time.monotonic()
        for sock in readable:
            data, addr = sock.recvfrom(65535)
            if sock is self.natt:
                if not data.startswith(NON_ESP_MARKER):
                    self.esp_in_udp += 1
                    continue
                data = data[4:]
                self.natt_peers.add(addr)
            self.endpoint.receive_datagram(data, addr, now)
        self.endpoint.handle_timer(now)
        self.flush()

    def flush(self) -> None:
        for data, addr in self.endpoint.datagrams_to_send():
            if self.natt is not None and (addr in self.natt_peers or addr[1] == NATT_PORT):  # floated (RFC 7296 2.23)
                self.natt.sendto(NON_ESP_MARKER + data, addr)
            else:
                self.sock.sendto(data, addr)
        for session, event in self.endpoint.next_events():
            print(json.dumps(describe(event)), flush=True)
            self.record(session, event)

    def record(self, session, event: Event) -> None:
        if isinstance(event, IkeEstablished):
            self.established += 1
            self.ike_lines.append(ikev2_line(event.spi_i, event.spi_r, event.suite, event.keys))
        elif isinstance(event, ChildEstablished):
            self.children += security_associations(event.child, session.local[0], session.remote[0])
        elif isinstance(event, IkeClosed) and event.reason not in REKEYED:  # a rekeyed SA lives on in its successor
            self.closed += 1
        if self.keys is not None:
            self.keys.mkdir(parents=True, exist_ok=True)
            (self.keys / IKE_KEYS).write_text("".join(line + "\n" for line in self.ike_lines))
            (self.keys / ESP_KEYS).write_text(esp_sa_file(self.children))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = build_config(args)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.local, IKE_PORT))
    natt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # an initiator that detects a NAT floats there
    natt.bind((args.local, NATT_PORT))
    endpoint = IkeEndpoint(config if args.role == "respond" else None, (args.local, IKE_PORT))
    shell = Shell(endpoint, sock, Path(args.keys) if args.keys else None, natt)
    print(json.dumps({"event": "Listening", "local": args.local}), flush=True)  # sockets bound: peers may start
    deadline = time.monotonic() + args.timeout
    if args.role == "initiate":
        spi = bytes.fromhex(args.spi) if args.spi else None
        session = endpoint.initiate(config, (args.remote, IKE_PORT), time.monotonic(), spi)
        if args.next_spi:  # behind the extensible NAT: the rekeyed IKE SA's SPIi is a second leased cookie
            session.ike_spi_source = spares([bytes.fromhex(args.next_spi)])
        shell.flush()
        return run_initiator(shell, session, args, deadline)
    while time.monotonic() < deadline and not (args.sas and shell.closed >= args.sas):
        shell.step(deadline)
    return 0 if shell.established >= max(args.sas, 1) else 1


def run_initiator(shell: Shell, session, args: argparse.Namespace, deadline: float) -> int:
    while time.monotonic() < deadline and not shell.established and not shell.closed:
        shell.step(deadline)
    if not shell.established:
        return 1
    hold = time.monotonic() + args.hold
    while time.monotonic() < hold and not shell.closed:
        shell.step(hold)
    if not shell.closed:
        for live in list(shell.endpoint.sessions.values()):  # after IKE rekeys, the successor is the live one
            live.close(time.monotonic())
        shell.flush()
        end = time.monotonic() + 5
        while time.monotonic() < end and not shell.closed:
            shell.step(end)
    return 0


def spares(spis: list[bytes]) -> Callable[[], bytes | None]:
    """The leased SPIs an IKE SA rekey may take, each once; then None (the session waits, then gives up)."""
    def take() -> bytes | None:
        return spis.pop(0) if spis else None
    return take


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m client_agent.ike_udp", description=__doc__.split("\n")[0])
    p.add_argument("role", choices=("initiate", "respond"))
    p.add_argument("--local", required=True, help="address to bind UDP port 500 on")
    p.add_argument("--remote", help="the responder's address (initiate)")
    p.add_argument("--id", required=True, help="our identity: fqdn:, rfc822:, ipv4: or bare")
    p.add_argument("--remote-id")
    p.add_argument("--psk")
    p.add_argument("--psk-file")
    p.add_argument("--ike", action="append", default=None)
    p.add_argument("--esp", action="append", default=None)
    p.add_argument("--ah", action="append", default=[])
    p.add_argument("--mode", default="tunnel", choices=("transport", "tunnel"))
    p.add_argument("--local-ts", action="append")
    p.add_argument("--remote-ts", action="append")
    p.add_argument("--spi", help="our IKE SPI (hex, 16 digits): the leased cookie behind the extensible NAT")
    p.add_argument("--next-spi", help="the SPIi (hex) for an IKE SA rekey, leased too; peers' IKE rekeys are then "
                   "refused with TEMPORARY_FAILURE and redone with it (RFC 7296 2.25)")
    p.add_argument("--natd-address", help="compute NAT_DETECTION_SOURCE_IP over this address (the global one)")
    p.add_argument("--no-natd", action="store_true")
    p.add_argument("--ike-on-4500", action="store_true",
                   help="(always on now: IKE with the non-ESP marker is taken on UDP 4500, where NAT-T moves it)")
    p.add_argument("--keys", help="directory for ikev2_decryption_table and esp_sa")
    p.add_argument("--child-rekey", type=float, help="initiator: rekey the CHILD_SA after this many seconds")
    p.add_argument("--ike-rekey", type=float, help="initiator: rekey the IKE SA after this many seconds")
    p.add_argument("--hold", type=float, default=1.0)
    p.add_argument("--sas", type=int, default=1, help="responder: exit after this many IKE SAs closed")
    p.add_argument("--timeout", type=float, default=20.0)
    return p


if __name__ == "__main__":
    sys.exit(main())
