"""``natlab lease define|alloc|renew|release|show``: the lease client's thin shell.

All protocol logic is in :mod:`client_agent.lease_client`; this module owns
the UDP socket, the clock, the state file and the printing. Leases outlive
one command: their nonce (the proof of ownership) and assigned values are
kept in a small JSON state file so that ``renew`` and ``release`` can name
them later.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import errno
import ipaddress
import json
import os
import select
import socket
import sys
import tempfile
import time
from collections.abc import Callable

from client_agent.lease_client import Expired, Granted, Lease, LeaseClient, Refused, TimedOut, Transaction
from netwire import pcp
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from netwire.plan import GATEWAY_IP

DEFAULT_SERVER = GATEWAY_IP
DEFAULT_STATE = "/run/natlab/leases-{client_ip}.json"
DEFAULT_TIMEOUT = 10.0
STATE_VERSION = 1
PROTOCOL_NAMES = {"icmp": IPPROTO_ICMP, "tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "esp": IPPROTO_ESP, "ah": IPPROTO_AH}
NUMBERS = {v: k for k, v in PROTOCOL_NAMES.items()}
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_ANSWER, EXIT_STATE = 0, 1, 2, 3, 4

EPILOG = """\
The lease protocol is PCP (RFC 6887) version 2 to the gateway on UDP 5351,
with natlab's private opcodes DEFINE, LEASE and READ (netwire/LEASE-PROTOCOL.md).
A lease is named by its ID, the hex of its 96-bit nonce (any unique prefix of
at least 4 digits will do), kept in the state file with the values the NAT
assigned. Exit status: 0 granted, 1 refused (the result code is printed),
2 bad input, 3 no answer before --timeout, 4 unknown lease ID or bad state file.

examples:
  natlab lease define esp                      # ESP's GPN is the SPI (32 bits, no source GPN)
  natlab lease alloc --protocol esp --foreign 203.0.113.100
  natlab lease alloc --protocol isakmp --foreign 203.0.113.100 --lifetime 600
  natlab lease alloc --protocol udp --private-gpn 4500 --json
  natlab lease show
  natlab lease renew --all
  natlab lease release 3f2a1b9c
"""


# ----------------------------------------------------------------------------- argument types


def _integer(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (decimal, or hex with 0x)") from None


def _bounded(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _integer(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what} in {low}..{high}")
        return value
    parse.__name__ = what
    return parse


_gpn = _bounded(0, (1 << 64) - 1, "GPN")
_port = _bounded(0, 65535, "port")
_bits16 = _bounded(0, 65535, "bit offset")
_length = _bounded(1, 64, "length in bits")
_lifetime = _bounded(1, 0xFFFFFFFF, "lifetime in seconds")


def _protocol(text: str) -> tuple[int, int]:
    """(IP protocol, underlying UDP port or 0): a name, isakmp (17 over UDP port 500), or 0-255."""
    name = text.lower()
    if name == "isakmp":
        return IPPROTO_UDP, 500
    if name in PROTOCOL_NAMES:
        return PROTOCOL_NAMES[name], 0
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"{text!r} is not esp, ah, isakmp, udp, tcp, icmp or a protocol number 0-255")
    return value, 0


def _address(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address") from None


def _foreign(text: str) -> str | None:
    return None if text.lower() == "any" else _address(text)


def _offset_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else _bits16(text)


def _range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN-MAX")
    lo, hi = _gpn(low), _gpn(high)
    if lo > hi:
        raise argparse.ArgumentTypeError(f"{text!r} is empty (MIN is above MAX)")
    return lo, hi


def _server(text: str) -> tuple[str, int]:
    host, _, port = text.partition(":")
    return _address(host), _bounded(1, 65535, "port")(port) if port else pcp.SERVER_PORT


def _underlying(text: str) -> int:
    choices = {"ip": pcp.UNDERLYING_IP, "udp": pcp.UNDERLYING_UDP}
    if text.lower() not in choices:
        raise argparse.ArgumentTypeError(f"{text!r} is neither ip nor udp")
    return choices[text.lower()]


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


# ----------------------------------------------------------------------------- the parser


def add_lease_parser(sub) -> None:
    """Add ``lease`` and its actions to the ``natlab`` command's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", type=_server, default=(DEFAULT_SERVER, pcp.SERVER_PORT), metavar="IP[:PORT]",
                        help=f"the NAT gateway (default {DEFAULT_SERVER}:{pcp.SERVER_PORT})")
    common.add_argument("--client-ip", type=_address, metavar="IP",
                        help="this host's address (default: the one that routes to the server)")
    common.add_argument("--state", metavar="FILE", help="where leases are kept between commands "
                                                        f"(default {DEFAULT_STATE.format(client_ip='<client ip>')})")
    common.add_argument("--timeout", type=_positive, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"give up after S seconds without an answer (default {DEFAULT_TIMEOUT:g}; "
                             "RFC 6887 retransmits after about 3, 9, 21 s...)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    lease = sub.add_parser("lease", help="lease global IPs, SPIs, cookies and ports from the NAT (FIG. 6, FIG. 7)",
                           description="Talk to the NAT's lease server: define a protocol's GPN, allocate, "
                                       "renew, release and list translation entries.",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = lease.add_subparsers(dest="lease_action", required=True, metavar="ACTION")

    p = actions.add_parser("define", parents=[common], help="tell the NAT where a protocol carries its GPN (step 701)",
                           description="Send a GPN definition (DEFINE). Start from a preset (esp, ah, isakmp) or give "
                                       "the fields (at least --protocol, --dst-offset, --length); options override "
                                       "the preset. A protocol the NAT translates itself (TCP, UDP, ICMP) is refused "
                                       "with HAS_ALG (step 703).")
    p.add_argument("preset", nargs="?", choices=sorted(pcp.DEFINITIONS), help="a known definition")
    given = {"default": argparse.SUPPRESS}  # absent unless given, so that None ("none") can be given
    p.add_argument("--protocol", type=_protocol, metavar="P", help="protocol being defined: esp, ah, or 0-255", **given)
    p.add_argument("--underlying", type=_underlying, metavar="ip|udp", help="what carries it (default ip)", **given)
    p.add_argument("--port", type=_port, metavar="N", help="underlying UDP port (0 for ip)", **given)
    p.add_argument("--src-offset", type=_offset_or_none, metavar="BITS|none", **given,
                   help="source GPN offset in bits after the underlying header; none = no source GPN (default)")
    p.add_argument("--dst-offset", type=_bits16, metavar="BITS", help="destination GPN offset in bits", **given)
    p.add_argument("--length", type=_length, metavar="BITS", help="GPN length in bits, 1-64", **given)
    p.add_argument("--range", type=_range, metavar="MIN-MAX", help="values that may be leased (default 1 to all "
                                                                     "ones)", **given)
    p.add_argument("--unspecified", type=_gpn, metavar="V", help='the value meaning "let the NAT choose" (default 0)',
                   **given)
    p.add_argument("--lifetime", type=_lifetime, metavar="S", help="how long the definition lasts (default: NAT's)")
    p.set_defaults(func=_define)

    p = actions.add_parser("alloc", parents=[common], help="lease a global IP and GPN (step 704)",
                           description="Allocate a translation entry. esp, ah, isakmp and other protocols use LEASE "
                                       "(define them first); udp and tcp use PCP MAP (foreign any) or PEER "
                                       "(--foreign IP with --foreign-port). Unspecified values are chosen by the "
                                       "NAT; an unspecified private GPN is made equal to the global one.")
    p.add_argument("--protocol", type=_protocol, required=True, metavar="esp|ah|isakmp|udp|tcp|N")
    p.add_argument("--port", type=_bounded(1, 65535, "port"), metavar="N",
                   help="the underlying UDP port of a protocol defined over UDP (isakmp: 500)")
    p.add_argument("--private-gpn", type=_gpn, metavar="X", help="private GPN (udp/tcp: the internal port)")
    p.add_argument("--global-gpn", type=_gpn, metavar="X", help="suggested global GPN")
    p.add_argument("--global-ip", type=_address, metavar="IP", help="suggested global address")
    p.add_argument("--foreign", type=_foreign, default=None, metavar="IP|any", help="foreign address (default any)")
    p.add_argument("--foreign-port", type=_port, metavar="N", help="foreign port (udp/tcp with --foreign: PEER)")
    p.add_argument("--lifetime", type=_lifetime, metavar="S", help="requested lifetime (default: the NAT's)")
    p.set_defaults(func=_alloc)

    for name, verb, func in (("renew", "renew", _renew), ("release", "release", _release)):
        p = actions.add_parser(name, parents=[common], help=f"{verb} leases named in the state file",
                               description=f"{verb.capitalize()} one lease by ID (a unique prefix of its nonce in "
                                           "hex), or all of them.")
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("id", nargs="?", help="lease ID")
        which.add_argument("--all", action="store_true", help=f"{verb} every lease in the state file")
        p.set_defaults(func=func)

    p = actions.add_parser("show", parents=[common], help="list this host's entries (FIG. 6 fields)",
                           description="Ask the NAT for this host's entries (READ, proved by the nonce of one of "
                                       "them) and print them with the leases in the state file.")
    p.add_argument("--local", action="store_true", help="only the state file; do not ask the NAT")
    p.set_defaults(func=_show)


# ----------------------------------------------------------------------------- actions


def _define(args: argparse.Namespace) -> int:
    given = {key: getattr(args, dest) for dest, key in (
        ("underlying", "underlying"), ("port", "port"), ("src_offset", "src_offset_bits"),
        ("dst_offset", "dst_offset_bits"), ("length", "length_bits"), ("unspecified", "unspecified"),
    ) if hasattr(args, dest)}
    if hasattr(args, "protocol"):
        protocol, port = args.protocol
        given["protocol"] = protocol
        if port and "underlying" not in given:  # --protocol isakmp: UDP port 500
            given.update(underlying=pcp.UNDERLYING_UDP, port=port)
    if hasattr(args, "range"):
        given["range_min"], given["range_max"] = args.range
    base = pcp.DEFINITIONS.get(args.preset)
    if base is None:
        missing = [option for option, key in (("--protocol", "protocol"), ("--dst-offset", "dst_offset_bits"),
                                              ("--length", "length_bits")) if key not in given]
        if missing:
            return _usage(args, f"give a preset ({', '.join(sorted(pcp.DEFINITIONS))}) or at least "
                                f"{', '.join(missing)}")
        length = given["length_bits"]
        base = pcp.GpnDefinition(b"", 0, pcp.UNDERLYING_IP, 0, None, 0, length, 1, (1 << length) - 1, 0)
    try:
        definition = dataclasses.replace(base, **given)
    except ValueError as exc:
        return _usage(args, f"invalid definition: {exc}")
    return _ask_once(args, definition, "define")


def _alloc(args: argparse.Namespace) -> int:
    protocol, port = args.protocol
    port = args.port or port
    nonce = b""
    info: pcp.Info
    if protocol in (IPPROTO_TCP, IPPROTO_UDP) and not port:
        if args.private_gpn is None:
            return _usage(args, "--private-gpn (the internal port) is required for udp and tcp")
        for option, value in (("--private-gpn", args.private_gpn), ("--global-gpn", args.global_gpn)):
            if value is not None and value > 65535:
                return _usage(args, f"{option} {value}: a udp/tcp GPN is a port, 0-65535")
        if args.foreign is None:
            if args.foreign_port is not None:
                return _usage(args, "--foreign-port needs --foreign IP")
            info = pcp.MapInfo(nonce, protocol, args.private_gpn, args.global_gpn or 0, args.global_ip)
        else:
            if args.foreign_port is None:
                return _usage(args, "--foreign-port is required with --foreign for udp and tcp (PCP PEER)")
            info = pcp.PeerInfo(nonce, protocol, args.private_gpn, args.global_gpn or 0, args.global_ip,
                                args.foreign_port, args.foreign)
    else:
        if args.foreign_port is not None:
            return _usage(args, "--foreign-port applies to udp and tcp only")
        info = pcp.LeaseInfo(nonce, protocol, args.private_gpn, args.global_gpn, args.global_ip, args.foreign,
                             port=port)
    return _ask_once(args, info, "alloc")


def _ask_once(args: argparse.Namespace, info: pcp.Info, verb: str) -> int:
    """One request (DEFINE, LEASE, MAP or PEER) with the lifetime asked for, its outcome reported as ``verb``'s."""
    with _Session(args) as session:
        tx = session.client.request(info, args.lifetime or pcp.LIFETIME_UNSPECIFIED, session.now(),
                                    give_up_after=args.timeout)
        event = session.run([tx])[0]
        return session.report(verb, event)


def _renew(args: argparse.Namespace) -> int:
    with _Session(args) as session:
        leases = session.pick(args.id, args.all)
        if leases is None:
            return EXIT_STATE
        # Definitions first: after a NAT restart a LEASE needs its DEFINE back.
        status = EXIT_OK
        for batch in ([le for le in leases if le.opcode is pcp.Opcode.DEFINE],
                      [le for le in leases if le.opcode is not pcp.Opcode.DEFINE]):
            txs = [session.client.renew(lease, session.now(), give_up_after=args.timeout) for lease in batch]
            for event in session.run(txs):
                status = max(status, session.report("renew", event))
        return status


def _release(args: argparse.Namespace) -> int:
    with _Session(args) as session:
        leases = session.pick(args.id, args.all)
        if leases is None:
            return EXIT_STATE
        definitions = [le for le in leases if le.opcode is pcp.Opcode.DEFINE]
        if definitions and not args.all:
            return _usage(args, f"{definitions[0].id[:8]} is a definition, not a lease: definitions are not released")
        txs = [session.client.release(lease, session.now(), give_up_after=args.timeout)
               for lease in leases if lease.opcode is not pcp.Opcode.DEFINE]
        status = EXIT_OK
        for event in session.run(txs):
            status = max(status, session.report("release", event))
        return status


def _show(args: argparse.Namespace) -> int:
    with _Session(args) as session:
        local = list(session.leases.values())
        leased = sorted((le for le in local if le.opcode is not pcp.Opcode.DEFINE), key=lambda le: -le.expires)
        proof = leased[0] if leased else None  # the freshest lease is the likeliest to be known
        entries: list[pcp.EntryRecord] | None = None
        status, note = EXIT_OK, None
        if args.local:
            pass
        elif proof is None:
            note = "the NAT lists entries only to a client naming one of them, and the state file holds no lease"
        else:
            entries, start = [], 0
            while True:
                tx = session.client.request(pcp.ReadInfo(proof.nonce, (), start), 0, session.now(),
                                            give_up_after=args.timeout)
                event = session.run([tx])[0]
                if not isinstance(event, Granted):
                    status = session.report("show", event)
                    entries = None
                    break
                page = event.response.info
                if not isinstance(page, pcp.ReadInfo):  # a READ's answer without its entries: nothing to list
                    break
                entries += page.entries
                start += len(page.entries)
                if not page.entries or start >= (page.total or 0):
                    break
        session.print_show(local, entries, note)
        return status


def _usage(args: argparse.Namespace, message: str) -> int:
    print(f"natlab lease {args.lease_action}: {message}", file=sys.stderr)
    return EXIT_USAGE


# ----------------------------------------------------------------------------- the session: socket, clock, state


class _Session:
    """One command's socket, LeaseClient and state file."""

    def __init__(self, args: argparse.Namespace, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.args = args
        self.now, self.wall = clock, wall
        self.server = args.server
        self.client_ip = args.client_ip or _route_source(self.server)
        self.state_path = args.state or DEFAULT_STATE.format(client_ip=self.client_ip)
        self.client = LeaseClient(self.client_ip, self.server[0])
        self.sock: socket.socket | None = None
        self.leases: dict[str, Lease] = {}
        self._load()

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc) -> None:
        if self.sock is not None:
            self.sock.close()

    # -- network

    def _socket(self) -> socket.socket:
        if self.sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((self.client_ip, pcp.CLIENT_PORT))
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    sock.close()
                    raise
                sock.bind((self.client_ip, 0))  # 5350 is busy (another agent): any port will do
            self.sock = sock
        return self.sock

    def run(self, txs: list[Transaction]) -> list:
        """Drive the client until every transaction has ended; their outcomes, in order."""
        sock = self._socket()
        while not all(tx.done for tx in txs):
            for datagram in self.client.datagrams_to_send(self.now()):
                with contextlib.suppress(OSError):  # e.g. no route yet: RFC 6887 retransmission covers it
                    sock.sendto(datagram, self.server)
            deadline = self.client.timer(self.now())
            ready, _, _ = select.select([sock], [], [], None if deadline is None else max(0.0, deadline - self.now()))
            if ready:
                with contextlib.suppress(OSError):
                    data, (host, _port) = sock.recvfrom(65535)
                    self.client.receive(data, self.now(), source=host)
            self.client.handle_timer(self.now())
        return [tx.outcome for tx in txs]

    # -- state file

    def _load(self) -> None:
        try:
            with open(self.state_path) as f:
                state = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise SystemExit(f"natlab lease: cannot read state file {self.state_path} ({exc}); "
                             "give --state FILE") from None
        now, wall = self.now(), self.wall()
        try:
            if state.get("epoch"):
                self.client.epoch = (int(state["epoch"]["value"]), now - (wall - float(state["epoch"]["at"])))
            for item in state.get("leases", []):
                lease = _lease_from_json(item, now - wall)
                self.leases[lease.id] = lease
        except (KeyError, TypeError, ValueError) as exc:
            raise SystemExit(f"natlab lease: state file {self.state_path} is not natlab's: {exc!r}") from None

    def save(self) -> None:
        offset = self.wall() - self.now()
        epoch = self.client.epoch
        state = {
            "version": STATE_VERSION, "client_ip": self.client_ip, "server": f"{self.server[0]}:{self.server[1]}",
            "epoch": {"value": epoch[0], "at": epoch[1] + offset} if epoch else None,
            "leases": [_lease_to_json(lease, offset) for lease in self.leases.values()],
        }
        directory = os.path.dirname(self.state_path) or "."
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".leases-")
            with os.fdopen(fd, "w") as f:
                json.dump(state, f, indent=2)
            os.replace(tmp, self.state_path)
        except OSError as exc:
            raise SystemExit(f"natlab lease: cannot write state file {self.state_path} ({exc.strerror}); "
                             "run as root or give --state FILE") from None

    def pick(self, lease_id: str | None, everything: bool) -> list[Lease] | None:
        if everything:
            chosen = list(self.leases.values())
        else:
            key = (lease_id or "").lower()
            chosen = [le for le in self.leases.values() if le.id.startswith(key)] if len(key) >= 4 else []
            if len(chosen) != 1:
                why = "matches several leases" if chosen else "names no lease"
                print(f"natlab lease {self.args.lease_action}: ID {lease_id!r} {why} in {self.state_path} "
                      "(IDs are nonce prefixes of at least 4 hex digits; see `natlab lease show --local`)",
                      file=sys.stderr)
                return None
        for lease in chosen:
            self.client.adopt(lease)
        return chosen

    # -- results

    def report(self, action: str, event) -> int:
        """Record and print one transaction's outcome; the exit status it deserves."""
        if isinstance(event, Granted):
            lease = event.lease
            if lease is not None and lease.alive:
                self.leases[lease.id] = lease
            elif lease is not None:
                self.leases.pop(lease.id, None)
            self.save()
            self._print_granted(action, event)
            return EXIT_OK
        if isinstance(event, Refused):
            tx = event.transaction
            if tx.lease is not None and action == "release" and event.lifetime >= pcp.LONG_ERROR_LIFETIME:
                self.leases.pop(tx.lease.id, None)  # the NAT will never let us release it: stop trying
            self.save()
            self._emit({"action": action, "result": event.result.name, "lifetime": event.lifetime,
                        "id": tx.nonce.hex()},
                       f"natlab lease {action}: refused: {event.result.name} "
                       f"(the same request would meet it for {event.lifetime} s)", sys.stderr)
            return EXIT_REFUSED
        if isinstance(event, TimedOut | Expired | None):
            self._emit({"action": action, "result": "NO_ANSWER", "server": f"{self.server[0]}:{self.server[1]}"},
                       f"natlab lease {action}: no answer from {self.server[0]}:{self.server[1]} within "
                       f"{self.args.timeout:g} s", sys.stderr)
            return EXIT_NO_ANSWER
        raise AssertionError(event)

    def _print_granted(self, action: str, event: Granted) -> None:
        response, lease = event.response, event.lease
        defined = response.opcode == pcp.Opcode.DEFINE  # definitions never expire (lifetime 0)
        released = action == "release" or (response.lifetime == 0 and not defined)
        info = lease.info if released and lease is not None else response.info  # a release echoes zeros for MAP
        record = _fields(response.opcode, info, self.client_ip)
        record.update(action=action, result=response.result.name, id=event.transaction.nonce.hex(),
                      lifetime=response.lifetime, epoch=response.epoch,
                      expires=None if released else _iso(self.wall() + response.lifetime))
        kind = f"{record['kind']} " if "kind" in record else ""
        verb = "released" if released else "defined" if defined else "granted"
        lines = [f"{verb} {record['id'][:8]}  {kind}{_describe(record)}"]
        if not released and not defined and lease is not None:
            renew_after = _iso(self.wall() + (lease.renew_at or lease.expires) - self.now())
            lines.append(f"  lifetime {response.lifetime} s, expires {record['expires']} "
                         f"(renew after {renew_after}: natlab lease renew {record['id'][:8]})")
        self._emit(record, "\n".join(lines), sys.stdout)

    def print_show(self, local: list[Lease], entries: list[pcp.EntryRecord] | None, note: str | None) -> None:
        now, wall = self.now(), self.wall()
        mine = [dict(_fields(le.opcode, le.info, self.client_ip), id=le.id, opcode=le.opcode.name,
                     lifetime=le.lifetime, expires=_iso(wall + le.expires - now),
                     state="live" if le.expires > now else "expired") for le in local]
        nat = None if entries is None else [_entry_fields(e) for e in entries]
        if self.args.json:
            print(json.dumps({"action": "show", "client_ip": self.client_ip, "state_file": self.state_path,
                              "leases": mine, "nat_entries": nat, "note": note}, indent=2))
            return
        print(f"leases of {self.client_ip} in {self.state_path}:" if mine else f"no leases in {self.state_path}")
        for record in mine:
            print(f"  {record['id'][:8]}  {record['opcode']:<6} {_describe(record)}  "
                  f"[{record['state']}, expires {record['expires']}]")
        if nat is not None:
            print(f"entries the NAT holds for {self.client_ip}:" if nat else f"the NAT holds no entry for "
                                                                           f"{self.client_ip}")
            for record in nat:
                print(f"  {record['kind']:<10} {_describe(record)}  [{record['lifetime']} s left]")
        if note:
            print(f"({note})")

    def _emit(self, record: dict, text: str, stream) -> None:
        print(json.dumps(record, indent=2) if self.args.json else text, file=sys.stdout if self.args.json else stream)


def _route_source(server: tuple[str, int]) -> str:
    """The address this host uses towards the server (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(server)
        except OSError as exc:
            raise SystemExit(f"natlab lease: no route to {server[0]} ({exc.strerror}); give --client-ip") from None
        return probe.getsockname()[0]


# ----------------------------------------------------------------------------- FIG. 6 fields and JSON


def _fields(opcode, info, client_ip: str) -> dict:
    """Every FIG. 6 field of a granted MAP/PEER/LEASE, or a DEFINE's fields."""
    if isinstance(info, pcp.MapInfo | pcp.PeerInfo):
        peer = info if isinstance(info, pcp.PeerInfo) else None
        return {"kind": "CLIENT-ALG", "protocol": info.protocol, "port": 0, "private_ip": client_ip,
                "private_gpn": info.internal_port, "global_ip": info.external_ip, "global_gpn": info.external_port,
                "foreign_ip": peer.remote_ip if peer else None, "foreign_port": peer.remote_port if peer else None}
    if isinstance(info, pcp.LeaseInfo):
        return {"kind": "CLIENT-ALG", "protocol": info.protocol, "port": info.port, "private_ip": client_ip,
                "private_gpn": info.private_gpn, "global_ip": info.global_ip, "global_gpn": info.global_gpn,
                "foreign_ip": info.foreign_ip}
    if isinstance(info, pcp.GpnDefinition):
        return {"definition": {k: v for k, v in dataclasses.asdict(info).items() if k != "nonce"},
                "protocol": info.protocol, "port": info.port}
    return {}


def _entry_fields(e: pcp.EntryRecord) -> dict:
    return {"kind": e.kind, "protocol": e.protocol, "port": e.port, "private_ip": e.private_ip,
            "private_gpn": e.private_gpn, "global_ip": e.global_ip, "global_gpn": e.global_gpn,
            "foreign_ip": e.foreign_ip, "lifetime": e.lifetime}


def _protocol_name(protocol: int, port: int) -> str:
    if protocol == IPPROTO_UDP and port == 500:
        return "isakmp"
    name = NUMBERS.get(protocol, str(protocol))
    return f"{name}/{port}" if port else name


def _gpn_text(value: int | None, protocol: int, port: int) -> str:
    if value is None:
        return "-"
    return str(value) if protocol in (IPPROTO_TCP, IPPROTO_UDP) and not port else f"{value:#x}"


def _describe(r: dict) -> str:
    if "definition" in r:
        d = r["definition"]
        src = "none" if d["src_offset_bits"] is None else f"{d['src_offset_bits']}"
        under = "ip" if d["underlying"] == pcp.UNDERLYING_IP else f"udp/{d['port']}"
        return (f"definition {_protocol_name(r['protocol'], r['port'])}: over {under}, {d['length_bits']} bits at "
                f"src {src} dst {d['dst_offset_bits']}, range {d['range_min']:#x}-{d['range_max']:#x}, "
                f"unspecified {d['unspecified']:#x}")
    protocol, port = r["protocol"], r.get("port") or 0
    foreign = r["foreign_ip"] or "any"
    if r.get("foreign_port") is not None:
        foreign += f":{r['foreign_port']}"
    return (f"{_protocol_name(protocol, port)}  private {r['private_ip']} "
            f"{_gpn_text(r['private_gpn'], protocol, port)}  global {r['global_ip'] or '-'} "
            f"{_gpn_text(r['global_gpn'], protocol, port)}  foreign {foreign}")


def _iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _lease_to_json(lease: Lease, wall_offset: float) -> dict:
    info = dataclasses.asdict(lease.info)
    info["nonce"] = lease.nonce.hex()
    return {"id": lease.id, "opcode": lease.opcode.name, "info": info, "requested_lifetime": lease.requested_lifetime,
            "lifetime": lease.lifetime, "granted_at": lease.granted_at + wall_offset}


def _lease_from_json(item: dict, mono_offset: float) -> Lease:
    opcode = pcp.Opcode[item["opcode"]]
    fields = dict(item["info"])
    fields["nonce"] = bytes.fromhex(fields["nonce"])
    kind = pcp.INFO_TYPES[opcode]
    if kind is None:
        raise ValueError(f"a saved {opcode.name} lease: that opcode leases nothing")
    info = kind(**fields)
    return Lease(opcode, info, int(item["requested_lifetime"]), int(item["lifetime"]),
                 float(item["granted_at"]) + mono_offset)


def main(argv: list[str] | None = None) -> int:
    """``python -m client_agent.lease_cli ...``: the same as ``natlab lease ...``."""
    parser = argparse.ArgumentParser(prog="natlab")
    add_lease_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
