"""The receiver's anti-replay window (RFC 4303 section 3.4.3 and Appendix A2.1; RFC 4302 section 3.4.3).

A sliding window over 32-bit sequence numbers: ``top`` is the highest number
accepted so far and bit ``i`` of ``bitmap`` records whether ``top - i`` was
accepted. Checking is split from accepting, as the RFC orders it: a packet is
checked before its ICV is verified (to reject replays cheaply) and only marks
the window once the ICV proved it genuine, so forged packets cannot move it.
"""

from __future__ import annotations

from client_agent.ipsec.errors import Replayed

MIN_WINDOW = 64  # "a window size of 64 SHOULD be the default" (RFC 4303 section 3.4.3)


class ReplayWindow:
    """Anti-replay state of one inbound SA; ``size`` sequence numbers wide."""

    __slots__ = ("size", "top", "bitmap", "_mask")

    def __init__(self, size: int = MIN_WINDOW) -> None:
        if size < MIN_WINDOW:
            raise ValueError(f"replay window size {size} is below the minimum of {MIN_WINDOW}")
        self.size = size
        self.top = 0
        self.bitmap = 0
        self._mask = (1 << size) - 1

    def check(self, seq: int) -> None:
        """Raise :class:`Replayed` if ``seq`` must be dropped; does not change the window.

        Sequence number 0 is never sent (the first packet carries 1, RFC 4303
        section 3.3.3), so it is treated as left of the window.
        """
        if seq > self.top:
            return
        offset = self.top - seq
        if seq == 0 or offset >= self.size:
            raise Replayed(seq, duplicate=False)
        if self.bitmap >> offset & 1:
            raise Replayed(seq, duplicate=True)

    def accept(self, seq: int) -> None:
        """Mark ``seq`` as received, sliding the window right when it is new ahead of it."""
        if seq > self.top:
            shift = seq - self.top
            # A jump beyond the window leaves only the new number: never shift a
            # Python int by up to 2**32 bits.
            self.bitmap = ((self.bitmap << shift) & self._mask | 1) if shift < self.size else 1
            self.top = seq
        else:
            self.bitmap |= 1 << (self.top - seq)

    def check_and_accept(self, seq: int) -> None:
        """Both steps at once, for callers that have already verified the packet."""
        self.check(seq)
        self.accept(seq)

    def seen(self, seq: int) -> bool:
        """Whether ``seq`` lies inside the window and was accepted (for tests and inspection)."""
        offset = self.top - seq
        return 0 <= offset < self.size and bool(self.bitmap >> offset & 1)
