"""FTP's address-carrying commands: PORT (RFC 959 section 4.1.2) and EPRT (RFC 2428 section 2).

An active-mode FTP client tells the server where to open the data
connection: ``PORT h1,h2,h3,h4,p1,p2`` or ``EPRT |1|a.b.c.d|port|``. Behind a
NAT that address is private, and the server refuses it (pyftpdlib: "501
Rejected data connection to foreign address") or cannot reach it. An ALG
rewrites it to the global address and a global port mapped to the one the
client listens on. :func:`data_rewriter` builds that rewrite for a
:class:`netwire.tcprewrite.LineRewriter`, shared by the client's ALG
(inside IPsec, seed step 813) and the NAT's own (cleartext, NAT-AUTO).

Passive mode (PASV's 227, EPSV's 229 replies) names the server's address,
which is not behind this NAT: nothing to rewrite for clients behind it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

from netwire.checksum import ip_bytes

FTP_CONTROL_PORT = 21  # RFC 959 section 3.2 (IANA "ftp")
DATA_COMMANDS = (b"PORT", b"EPRT")
EPRT_IPV4 = b"1"  # RFC 2428 section 2: address family 1 is IPv4

_PORT = re.compile(rb"(?i)(PORT) +(\d{1,3}(?:,\d{1,3}){5}) *(\r?\n)\Z")
# the delimiter is any printable ASCII character but a digit (RFC 2428 section 2 suggests '|')
_EPRT = re.compile(rb"(?i)(EPRT) +([!-/:-~])([0-9]+)\2([0-9.]{7,15})\2([0-9]{1,5})\2 *(\r?\n)\Z")


@dataclass(frozen=True)
class DataCommand:
    """A parsed PORT or EPRT line: the address and port it names, and how to write another one like it."""

    verb: bytes
    ip: str
    port: int
    delimiter: bytes = b"|"
    eol: bytes = b"\r\n"

    def with_address(self, ip: str, port: int) -> bytes:
        """The same command (verb's case, delimiter, line end) naming ``ip`` and ``port``."""
        if self.verb.upper() == b"PORT":
            return self.verb + b" " + _port_argument(ip, port) + self.eol
        d = self.delimiter
        return self.verb + b" " + d + EPRT_IPV4 + d + ip.encode() + d + str(port).encode() + d + self.eol


def parse_data_command(line: bytes) -> DataCommand | None:
    """The PORT/EPRT command in ``line`` (with its line end), or None if it is none or malformed."""
    if (m := _PORT.match(line)) is not None:
        numbers = [int(n) for n in m.group(2).split(b",")]
        if max(numbers) > 255 or not numbers[4] | numbers[5]:
            return None
        ip = ".".join(str(n) for n in numbers[:4])
        return DataCommand(m.group(1), ip, numbers[4] << 8 | numbers[5], eol=m.group(3))
    if (m := _EPRT.match(line)) is not None and m.group(3) == EPRT_IPV4:
        port = int(m.group(5))
        if not _dotted_quad(m.group(4).decode()) or not 0 < port <= 0xFFFF:
            return None
        return DataCommand(m.group(1), m.group(4).decode(), port, m.group(2), m.group(6))
    return None


def is_data_command(line: bytes) -> bool:
    """Whether ``line`` starts with PORT or EPRT (well-formed or not)."""
    return line[:4].upper() in DATA_COMMANDS


def might_be_data_command(partial: bytes) -> bool:
    """Whether an incomplete line could still become a PORT or EPRT command (so an ALG holds it back)."""
    head = partial[:4].upper()
    return any(verb.startswith(head) for verb in DATA_COMMANDS)


def data_rewriter(private_ip: str, global_ip: str, port_for: Callable[[int], int | None],
                  counters: MutableMapping[str, int]) -> Callable[[bytes], bytes | None]:
    """A line rewrite: PORT/EPRT naming ``private_ip`` get ``global_ip`` and ``port_for(private port)``.

    Anything else is left alone and counted by reason: a malformed command,
    another address (FXP's third party, or already global), no global port.
    """
    def rewrite(line: bytes) -> bytes | None:
        if not is_data_command(line):
            return None
        command = parse_data_command(line)
        if command is None:
            counters["ftp:malformed-command"] += 1
            return None
        if command.ip != private_ip:
            counters["ftp:not-our-address"] += 1
            return None
        global_port = port_for(command.port)
        if global_port is None:
            counters["ftp:no-global-port"] += 1
            return None
        counters[f"ftp:{command.verb.upper().decode()}"] += 1
        return command.with_address(global_ip, global_port)
    return rewrite


def _port_argument(ip: str, port: int) -> bytes:
    return ",".join([*(str(b) for b in ip_bytes(ip)), str(port >> 8), str(port & 0xFF)]).encode()


def _dotted_quad(text: str) -> bool:
    try:
        ip_bytes(text)
    except ValueError:
        return False
    return True
