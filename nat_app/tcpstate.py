"""TCP connection phases as the NAT sees them (RFC 5382 section 5 REQ-5, RFC 7857 section 2.2).

RFC 5382 lets a NAT drop an idle mapping after the *established* idle-timeout (at least
2 h 4 min) or, for a connection that is only partially open or closed, after the *transitory*
one (at least 4 min). OpenFlow's fast path sees no TCP state, so r1 punts the segments that
change it (any SYN, FIN or RST: base flows matching ``tcp_flags``) to the controller, while
data and pure ACKs stay in r1; this tracker turns those segments into the phase, and the
core re-times the entry's flow when the phase changes.

- transitory: a handshake not yet seen both ways (a SYN each way; simultaneous open, RFC 5382
  REQ-2 a, counts the same), both FINs seen, or an RST (RFC 7857 2.2: after an RST the mapping
  is kept for the transitory timeout, not removed at once, since the RST may be lost or forged);
- established: SYNs seen both ways and not both FINs nor an RST since;
- a new SYN after the connection closed (the 4-tuple reused) starts a new handshake.

A mapping made by a segment that is not a SYN (a connection the NAT did not see open, e.g.
after a restart) is taken to be established: guessing "transitory" could cut a live
connection after 4 min, which REQ-5 forbids.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from netwire.ipv4 import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN

__pure__ = True

STATE_FLAGS = TCP_SYN | TCP_FIN | TCP_RST  # the flags r1 punts to the controller


class Phase(enum.Enum):
    TRANSITORY = "transitory"
    ESTABLISHED = "established"


@dataclass
class Connection:
    syn_out: bool = False
    syn_in: bool = False
    fin_out: bool = False
    fin_in: bool = False
    rst: bool = False

    @property
    def phase(self) -> Phase:
        if self.rst or (self.fin_out and self.fin_in) or not (self.syn_out and self.syn_in):
            return Phase.TRANSITORY
        return Phase.ESTABLISHED


def first_phase(flags: int | None) -> Phase:
    """The phase of a mapping its first outbound segment opens: a SYN without ACK starts a handshake."""
    if flags is not None and flags & TCP_SYN and not flags & TCP_ACK:
        return Phase.TRANSITORY
    return Phase.ESTABLISHED


class TcpTracker:
    """The phase of each TCP NAT-ALG entry, by entry id."""

    def __init__(self) -> None:
        self._connections: dict[int, Connection] = {}

    def opened(self, entry_id: int, flags: int | None) -> Phase:
        """A mapping made by an outbound segment with these flags."""
        if first_phase(flags) is Phase.TRANSITORY:
            self._connections[entry_id] = Connection(syn_out=True)
            return Phase.TRANSITORY
        self._connections[entry_id] = Connection(syn_out=True, syn_in=True)
        return Phase.ESTABLISHED

    def seen(self, entry_id: int, flags: int | None, outbound: bool) -> Phase | None:
        """A punted segment of a tracked entry: its new phase if it changed, else None."""
        conn = self._connections.get(entry_id)
        if conn is None or flags is None:
            return None
        before = conn.phase
        if flags & TCP_SYN and (conn.rst or (conn.fin_out and conn.fin_in)):
            conn = self._connections[entry_id] = Connection()  # the 4-tuple reused: a new handshake
        _note(conn, flags, outbound)
        return conn.phase if conn.phase is not before else None

    def phase(self, entry_id: int) -> Phase | None:
        conn = self._connections.get(entry_id)
        return None if conn is None else conn.phase

    def forget(self, entry_id: int) -> None:
        self._connections.pop(entry_id, None)

    def __len__(self) -> int:
        return len(self._connections)


def _note(conn: Connection, flags: int, outbound: bool) -> None:
    if flags & TCP_RST:
        conn.rst = True
    if flags & TCP_SYN:
        if outbound:
            conn.syn_out = True
        else:
            conn.syn_in = True
    if flags & TCP_FIN:
        if outbound:
            conn.fin_out = True
        else:
            conn.fin_in = True
