"""Rewriting lines of a TCP byte stream, segment by segment: the engine of an FTP ALG (RFC 959, RFC 2428).

An ALG sees segments, not the stream: a command may be split across two of
them, several may be pipelined in one, a rewritten segment may be sent
again, and the rewrite may change the stream's length. :class:`LineRewriter`
handles one direction of a connection:

- complete lines (ending in LF; FTP sends Telnet CRLF) that start at a line
  start are offered to a ``rewrite`` function, which may replace them;
- an incomplete line at a segment's end that *might* become a rewritable
  command (``might_rewrite``) is held back and sent, rewritten, with the
  segment that completes it (the receiver acknowledges only what it got, so
  the sender keeps the held bytes and retransmits them if that segment is
  lost); anything else goes on at once;
- a retransmission is rebuilt from the edits already made (:mod:`netwire.seqadjust`),
  so the receiver gets the same bytes at the same positions twice;
- a segment beyond a gap is dropped: without the bytes before it the line
  boundaries are unknown, and TCP resends it after the gap is filled;
- a stream joined in the middle (no SYN seen) is not rewritten until its
  first line end; a line longer than ``max_line`` is left alone.

:func:`rewrite_segment` applies one direction's rewriter to an IPv4/TCP packet
and the other direction's to its ACK and SACK blocks (RFC 2018), with the TCP
checksum updated incrementally (RFC 1624), so whatever pseudo-header it was
computed over (the client module's global address, seed claims 3-5) still
holds. It never raises on hostile input: it leaves what it cannot parse alone
and counts why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping

from netwire.checksum import apply_difference, internet_checksum, ones_complement_sum
from netwire.ipv4 import IPPROTO_TCP, TCP_ACK, TCP_CHECKSUM_OFFSET, TCP_FIN, TCP_RST, TCP_SYN
from netwire.seqadjust import SEQ_MOD, SeqMap, unwrap

MAX_LINE = 512  # RFC 959 has no limit; PORT/EPRT lines are under 80 bytes, so a longer one is no command to rewrite
TCP_OPT_EOL, TCP_OPT_NOP, TCP_OPT_SACK = 0, 1, 5

Rewrite = Callable[[bytes], "bytes | None"]


class PrefixedCounters(MutableMapping[str, int]):
    """Counters kept under ``prefix`` in another mapping (the agent's ALG counters, the NAT's), for LineRewriter.

    A name missing reads as 0, as in a Counter.
    """

    def __init__(self, target: MutableMapping[str, int], prefix: str) -> None:
        self.target, self.prefix = target, prefix

    def _key(self, name: str) -> str:
        return name if name.startswith(self.prefix) else self.prefix + name

    def __getitem__(self, name: str) -> int:
        return self.target.get(self._key(name), 0)

    def __setitem__(self, name: str, value: int) -> None:
        self.target[self._key(name)] = value

    def __delitem__(self, name: str) -> None:
        del self.target[self._key(name)]

    def __iter__(self) -> Iterator[str]:
        return (k for k in list(self.target) if k.startswith(self.prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class LineRewriter:
    """One direction of a line-oriented TCP connection whose lines ``rewrite`` may replace."""

    def __init__(self, rewrite: Rewrite | None = None, might_rewrite: Callable[[bytes], bool] | None = None,
                 max_line: int = MAX_LINE, counters: MutableMapping[str, int] | None = None) -> None:
        self.rewrite = rewrite
        self.might_rewrite = might_rewrite or (lambda _partial: False)
        self.max_line = max_line
        self.map = SeqMap()
        self.next: int | None = None  # unwrapped original position of the next in-order byte
        self.isn: int | None = None  # the SYN's sequence number
        self.held = b""  # the start of a line that might be rewritten, not yet sent on
        self.at_line_start = False
        self.counters: MutableMapping[str, int] = counters if counters is not None else Counter()

    @property
    def hold_start(self) -> int:
        assert self.next is not None
        return self.next - len(self.held)

    def feed(self, seq: int, payload: bytes, *, syn: bool = False, fin: bool = False,
             rst: bool = False) -> tuple[int, bytes] | None:
        """The (SEQ, payload) to send for a segment of this direction; None: drop it (a gap before it)."""
        if syn:
            return self._syn(seq, payload)
        if self.next is None:  # joined in the middle: no line start known until the first line end
            self.next, self.at_line_start = seq, False
            self.counters["joined-mid-stream"] += 1
        u = unwrap(seq, self.next)
        if self.rewrite is None and not self.map.edits:  # nothing to rewrite here: no lines to track, no gaps
            self.next = max(self.next, u + len(payload) + fin)
            return seq, payload
        if rst:
            return self._reset(seq, u), payload
        if u > self.next:
            self.counters["out-of-order-dropped"] += 1
            return None
        return self._in_window(u, payload, fin)

    def _reset(self, seq: int, u: int) -> int:
        """A RST's SEQ: moved like our bytes when it names a position of our stream; left alone when it does not.

        A SYN-SENT stack answers a stale ACK (the far end's old connection on the same ports) with
        <SEQ=SEG.ACK><CTL=RST> (RFC 9293 section 3.10.7.3): a number of the far end's old connection, which only
        frees the port if it arrives exactly as sent (RFC 5961 section 3.2). Moved into our stream, it was
        ignored and every SYN retry met the same stale ACK.
        """
        assert self.next is not None
        start = None if self.isn is None else unwrap(self.isn, self.next) + 1  # joined mid-stream: no start known
        if u > self.next or (start is not None and u < start):
            self.counters["reset-outside-stream"] += 1
            return seq
        return self._seq_out(self.map.to_new(min(u, self.hold_start)))

    def ack_back(self, ack: int) -> int:
        """The original sequence number of an ACK or SACK edge that counts this direction's rewritten bytes."""
        if self.next is None or not self.map.edits:
            return ack
        near = self.map.to_new(self.hold_start)
        return self.map.to_original(unwrap(ack, near)) % SEQ_MOD

    def _syn(self, seq: int, payload: bytes) -> tuple[int, bytes]:
        """A SYN: its retransmission changes nothing; one with a new ISN is a new connection on the same ports
        (a reused port; the NAT keeps a TCP entry for hours): the old edits would shift it, so they go."""
        if seq == self.isn:
            return self._seq_out(self.map.to_new(unwrap(seq, self.hold_start))), payload
        if self.map.edits:
            self.counters["new-connection"] += 1
            self.map = SeqMap()
        self.isn = seq
        self.next, self.held, self.at_line_start = seq + 1 + len(payload), b"", not payload
        if payload:
            self.counters["syn-data-not-inspected"] += 1
        return seq, payload

    def _in_window(self, u: int, payload: bytes, fin: bool) -> tuple[int, bytes]:
        if self.next is None:  # set by the first segment seen, before any is in a window
            raise RuntimeError("a segment in the window of a stream whose next byte is unknown")
        hold_start, end = self.hold_start, u + len(payload)
        first = min(u, hold_start)
        out = bytearray()
        if u < hold_start:
            out += self._replay(u, min(end, hold_start), payload)
            if end < hold_start:
                self.counters["retransmission"] += 1
        if end > self.next or (fin and end == self.next and self.held):
            out += self._advance(payload[self.next - u:], fin)
        if fin and end == self.next:  # the FIN takes a sequence number of its own (RFC 9293 section 3.4)
            self.next += 1
        return self._seq_out(self.map.to_new(first)), bytes(out)

    def _replay(self, u: int, stop: int, payload: bytes) -> bytes:
        """Original ``[u, stop)``, sent before, rebuilt as it was sent: edited ranges replaced whole."""
        out, pos = bytearray(), u
        for edit in self.map.overlapping(u, stop):
            if edit.start > pos:
                out += payload[pos - u:edit.start - u]
            out += edit.new
            pos = max(pos, edit.end)
        if pos < stop:
            out += payload[pos - u:stop - u]
        return bytes(out)

    def _advance(self, new: bytes, fin: bool) -> bytes:
        """New in-order bytes (after any held ones): complete lines offered to ``rewrite``; a tail held or sent."""
        base, data = self.hold_start, self.held + new
        self.held, out, pos = b"", bytearray(), 0
        while (nl := data.find(b"\n", pos)) >= 0:
            out += self._line(base + pos, data[pos:nl + 1])
            pos = nl + 1
        self.next = base + len(data)
        out += self._tail(data[pos:], fin)
        return bytes(out)

    def _line(self, start: int, line: bytes) -> bytes:
        if not self.at_line_start:
            self.at_line_start = True
            return line
        new = self._rewritten(line)
        if new is None or new == line:
            return line
        self.map.add(start, start + len(line), new)
        self.counters["rewritten"] += 1
        return new

    def _rewritten(self, line: bytes) -> bytes | None:
        if self.rewrite is None:
            return None
        if len(line) > self.max_line:
            self.counters["line-too-long"] += 1
            return None
        return self.rewrite(line)

    def _tail(self, rest: bytes, fin: bool) -> bytes:
        """An incomplete last line: held if it may become a command to rewrite, else sent on as it is."""
        if not rest:
            return b""
        candidate = self.at_line_start and self.rewrite is not None and self.might_rewrite(rest)
        if candidate and not fin and len(rest) <= self.max_line:
            self.held = rest
            return b""
        if candidate:
            self.counters["line-too-long" if not fin else "unfinished-at-fin"] += 1
        self.at_line_start = False
        return rest

    @staticmethod
    def _seq_out(position: int) -> int:
        return position % SEQ_MOD


def rewrite_segment(packet: bytes, this: LineRewriter, other: LineRewriter,
                    counters: MutableMapping[str, int] | None = None) -> bytes | None:
    """``packet`` (IPv4/TCP) with ``this`` direction's payload and SEQ rewritten and ACK/SACK mapped back through
    ``other``; the packet itself if nothing changes or it does not parse as TCP; None: drop it."""
    counters = counters if counters is not None else this.counters
    parsed = _parse(packet)
    if parsed is None:
        counters["malformed"] += 1
        return packet
    ihl, doff, total = parsed
    tcp = packet[ihl:total]
    seq, ack, flags = int.from_bytes(tcp[4:8], "big"), int.from_bytes(tcp[8:12], "big"), tcp[13]
    fed = this.feed(seq, tcp[doff:], syn=bool(flags & TCP_SYN), fin=bool(flags & TCP_FIN),
                    rst=bool(flags & TCP_RST))
    if fed is None:
        return None
    new_seq, payload = fed
    new_ack = other.ack_back(ack) if flags & TCP_ACK else ack
    options = _map_sack(tcp[20:doff], other, counters)
    if new_seq == seq and new_ack == ack and payload == tcp[doff:] and options == tcp[20:doff]:
        return packet
    header = bytearray(tcp[:doff])
    header[4:8], header[8:12] = new_seq.to_bytes(4, "big"), new_ack.to_bytes(4, "big")
    header[20:doff] = options
    return _rebuild(packet[:ihl], tcp, bytes(header) + payload)


def _parse(packet: bytes) -> tuple[int, int, int] | None:
    """(IP header length, TCP data offset, IP total length) of a well-formed unfragmented IPv4/TCP packet."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != IPPROTO_TCP or packet[6] & 0x3F or packet[7]:
        return None
    ihl, total = (packet[0] & 0x0F) * 4, int.from_bytes(packet[2:4], "big")
    if ihl < 20 or total > len(packet) or total < ihl + 20:
        return None
    doff = (packet[ihl + 12] >> 4) * 4
    return (ihl, doff, total) if 20 <= doff <= total - ihl else None


def _map_sack(options: bytes, other: LineRewriter, counters: MutableMapping[str, int]) -> bytes:
    """The TCP options with every SACK block's edges (RFC 2018 section 3) mapped back through ``other``."""
    out, i = bytearray(options), 0
    while i < len(options):
        kind = options[i]
        if kind == TCP_OPT_EOL:
            break
        if kind == TCP_OPT_NOP:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2 or i + options[i + 1] > len(options):
            counters["bad-tcp-options"] += 1
            return options
        length = options[i + 1]
        if kind == TCP_OPT_SACK:
            for at in range(i + 2, i + length - 7, 8):
                for edge in (at, at + 4):
                    mapped = other.ack_back(int.from_bytes(options[edge:edge + 4], "big"))
                    out[edge:edge + 4] = mapped.to_bytes(4, "big")
        i += length
    return bytes(out)


def _rebuild(ip_header: bytes, old_tcp: bytes, new_tcp: bytes) -> bytes:
    """The packet with ``new_tcp``: IP total length and header checksum, and the TCP checksum updated by the
    difference of the two segments' sums (RFC 1624), keeping the pseudo-header it was computed over."""
    csum_at = TCP_CHECKSUM_OFFSET
    old_sum = ones_complement_sum(_zero_checksum(old_tcp), len(old_tcp))
    new_sum = ones_complement_sum(_zero_checksum(new_tcp), len(new_tcp))
    diff = ones_complement_sum(new_sum.to_bytes(2, "big") + (~old_sum & 0xFFFF).to_bytes(2, "big"))
    checksum = apply_difference(int.from_bytes(old_tcp[csum_at:csum_at + 2], "big"), diff)
    tcp = bytearray(new_tcp)
    tcp[csum_at:csum_at + 2] = checksum.to_bytes(2, "big")
    header = bytearray(ip_header)
    header[2:4] = (len(ip_header) + len(tcp)).to_bytes(2, "big")
    header[10:12] = b"\x00\x00"
    header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + bytes(tcp)


def _zero_checksum(tcp: bytes) -> bytes:
    return tcp[:TCP_CHECKSUM_OFFSET] + b"\x00\x00" + tcp[TCP_CHECKSUM_OFFSET + 2:]
