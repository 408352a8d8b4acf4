"""TCP sequence-number adjustment for ALGs that change a payload's length (RFC 9293 section 3.4; RFC 2018).

An ALG that rewrites ``PORT 10,0,0,1,156,64`` into ``PORT 203,0,113,1,78,33``
changes how many bytes one side sent: from then on that side's SEQ numbers
must move by the difference, and the ACKs (and SACK blocks) that come back,
which count the rewritten bytes, must move back, or the sender sees
acknowledgements of data it never sent and the connection stalls. Linux keeps
one correction per direction (``nf_ct_seqadj``: the last position and the
offsets before and after it); this keeps every edit of a direction's stream,
up to a bound, so a retransmission of any rewritten segment maps right, not
only of the last one, and several rewrites in one connection compose.

Positions are "unwrapped": 32-bit sequence numbers are turned into integers
that keep growing past 2^32 (by the nearest distance to a known position,
RFC 9293's modular comparisons), so the arithmetic never wraps; only the
numbers written back into headers are taken modulo 2^32.

Pure: bytes and integers in, integers out (used by the client's ALG,
``client_agent.ftp_alg``, and the NAT's own, ``nat_app.ftp_alg``).
"""

from __future__ import annotations

from dataclasses import dataclass

SEQ_MOD = 1 << 32
_HALF = 1 << 31
MAX_EDITS = 64  # edits remembered per direction; older ones only keep their cumulative shift


def seq_add(seq: int, delta: int) -> int:
    """``seq + delta`` in sequence space (mod 2^32)."""
    return (seq + delta) % SEQ_MOD


def seq_diff(a: int, b: int) -> int:
    """The signed distance ``a - b`` of two sequence numbers, in [-2^31, 2^31) (RFC 9293 section 3.4)."""
    return (a - b + _HALF) % SEQ_MOD - _HALF


def unwrap(seq: int, near: int) -> int:
    """The unwrapped position of 32-bit ``seq`` closest to the unwrapped position ``near``."""
    return near + seq_diff(seq, near % SEQ_MOD)


@dataclass(frozen=True)
class Edit:
    """Original bytes ``[start, end)`` replaced by ``new``; ``shift`` is what earlier edits added."""

    start: int
    end: int
    new: bytes
    shift: int

    @property
    def delta(self) -> int:
        return len(self.new) - (self.end - self.start)

    @property
    def new_start(self) -> int:
        return self.start + self.shift


class SeqMap:
    """One direction's edits, mapping original positions to rewritten ones and back.

    Edits must come in stream order (each starts at or after the previous one's end).
    """

    def __init__(self, max_edits: int = MAX_EDITS) -> None:
        self.edits: list[Edit] = []
        self.shift = 0  # what all edits together added
        self.max_edits = max_edits
        self.forgotten = 0

    def add(self, start: int, end: int, new: bytes) -> Edit:
        """Record that original ``[start, end)`` became ``new``."""
        if self.edits and start < self.edits[-1].end:
            raise ValueError(f"edit at {start} overlaps or precedes the edit ending at {self.edits[-1].end}")
        edit = Edit(start, end, new, self.shift)
        self.edits.append(edit)
        self.shift += edit.delta
        if len(self.edits) > self.max_edits:
            del self.edits[0]
            self.forgotten += 1
        return edit

    def to_new(self, pos: int) -> int:
        """The rewritten position of original ``pos``; a position inside an edit maps to the edit's start."""
        for edit in reversed(self.edits):
            if pos >= edit.end:
                return pos + edit.shift + edit.delta
            if pos > edit.start:
                return edit.new_start
        return pos + (self.edits[0].shift if self.edits else self.shift)

    def to_original(self, pos: int) -> int:
        """The original position of rewritten ``pos`` (an ACK or SACK edge coming back).

        An acknowledgement that ends inside a rewritten range acknowledges
        nothing of it: it maps to the range's start, so the sender keeps those
        bytes until the whole replacement has arrived.
        """
        for edit in reversed(self.edits):
            new_end = edit.new_start + len(edit.new)
            if pos >= new_end:
                return pos - edit.shift - edit.delta
            if pos > edit.new_start:
                return edit.start
        return pos - (self.edits[0].shift if self.edits else self.shift)

    def overlapping(self, start: int, end: int) -> list[Edit]:
        """The edits that overlap original ``[start, end)``, in order."""
        return [e for e in self.edits if e.start < end and e.end > start]
