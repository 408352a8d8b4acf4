"""The client's FTP ALG: active FTP inside ESP/AH from behind the extensible NAT (seed steps 813 and 822).

In active mode the FTP client names, in its PORT or EPRT command, the
private address and port its stack listens on; the server must open the data
connection to a global one, and inside IPsec the NAT can neither read nor
change the command (claims 1, 2, 7, 13). So the client does it:

- outgoing, before authentication/encryption (step 813): PORT/EPRT naming
  our private address get the global IP and a global port of the client's
  leased TCP block, and that port is bound, ahead of the server's SYN, to the
  private port the client's stack listens on (:meth:`PortBlock.expect`), so
  the data connection is admitted and post-compensated on the way in like
  any other; the binding is reclaimable after :data:`EXPECT_TIMEOUT_S` if
  the server never connects;
- the rewrite changes the control connection's length, so its SEQ numbers
  are moved on the way out and the server's ACK and SACK edges moved back on
  the way in, after decryption (step 822), by :mod:`netwire.tcprewrite`.

The ALG sees packets as the far end does (after pre-compensation, before
post-compensation): a control connection is keyed by our global port and the
server's address and port.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, MutableMapping

from client_agent.compensate import Binding, NotCompensable
from client_agent.traversal import NoGlobalPort, PortBlock
from netwire.ftp import data_rewriter, might_be_data_command
from netwire.tcprewrite import LineRewriter, PrefixedCounters, rewrite_segment
from netwire.view import DST_OFFSET, SRC_OFFSET, Packet

__pure__ = True

EXPECT_TIMEOUT_S = 120.0  # curl and ftplib connect within seconds; pyftpdlib gives a data connection 30 s
MAX_CONTROL_CONNECTIONS = 256  # least recently used forgotten first: bounded state whatever the peers send

Key = tuple[int, bytes, int]  # (our global port, the server's IP, the server's port)


class _Control:
    """The two directions of one FTP control connection."""

    def __init__(self, rewrite: Callable[[bytes], bytes | None], counters: MutableMapping[str, int]) -> None:
        self.out = LineRewriter(rewrite, might_be_data_command, counters=counters)
        self.in_ = LineRewriter(counters=counters)  # replies name the server's address: nothing to rewrite


class FtpAlg:
    """Client ALG for FTP control connections (TCP port 21), registered in the agent's AlgRegistry."""

    name = "ftp"

    def __init__(self, block: PortBlock, *, clock: Callable[[], float] = time.monotonic,
                 expect_timeout: float = EXPECT_TIMEOUT_S, max_connections: int = MAX_CONTROL_CONNECTIONS,
                 counters: MutableMapping[str, int] | None = None) -> None:
        """``counters``: where to count (the agent passes its ALG registry's, so status.json shows them), as
        ``ftp:<reason>``."""
        self.block = block
        self.clock = clock
        self.expect_timeout = expect_timeout
        self.max_connections = max_connections
        self.connections: OrderedDict[Key, _Control] = OrderedDict()
        self.counters = PrefixedCounters(counters if counters is not None else Counter(), "ftp:")

    def outgoing(self, packet: Packet, binding: Binding) -> Packet:
        """Step 813: rewrite PORT/EPRT, move SEQ by what earlier rewrites added, map ACKs of the server's data."""
        key = _key(packet, binding, outgoing=True)
        if key is None:
            self.counters["malformed"] += 1
            return packet
        control = self.connections.get(key) or self._open(key, binding)
        self.connections.move_to_end(key)
        return _checked(rewrite_segment(bytes(packet), control.out, control.in_, self.counters))  # FTP control only

    def incoming(self, packet: Packet, binding: Binding) -> Packet:
        """Step 822: the server's ACK and SACK edges moved back into the sequence space our stack sent."""
        key = _key(packet, binding, outgoing=False)
        control = None if key is None else self.connections.get(key)
        if control is None:
            return packet
        return _checked(rewrite_segment(bytes(packet), control.in_, control.out, self.counters))

    def expected(self, private_port: int) -> int | None:
        """The global port the server's data connection for ``private_port`` will come to (None: block full)."""
        try:
            return self.block.expect(private_port, self.clock(), self.expect_timeout).global_port
        except NoGlobalPort:
            return None

    def _open(self, key: Key, binding: Binding) -> _Control:
        rewrite = data_rewriter(binding.private_ip, binding.global_ip, self.expected, self.counters)
        control = self.connections[key] = _Control(rewrite, self.counters)
        while len(self.connections) > self.max_connections:
            self.connections.popitem(last=False)
            self.counters["forgotten-connection"] += 1
        return control


def _key(packet: Packet, binding: Binding, *, outgoing: bool) -> Key | None:
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 4 or binding.global_port is None:
        return None
    at = DST_OFFSET if outgoing else SRC_OFFSET
    far_ip = bytes(packet[at:at + 4])  # hashable: compensation hands on a bytearray
    far_port = int.from_bytes(packet[ihl + 2:ihl + 4] if outgoing else packet[ihl:ihl + 2], "big")
    return binding.global_port, far_ip, far_port


def _checked(packet: bytes | None) -> bytes:
    if packet is None:
        raise NotCompensable("an FTP control segment beyond a gap: the sender resends it once the gap is filled")
    return packet
