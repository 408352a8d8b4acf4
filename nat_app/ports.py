"""Global port (GPN) spaces: one per (global IP, transport protocol).

Ports the NAT picks for its own NAPT mappings and ports clients lease later
come from the same space, so they can never collide (DESIGN.md, "One port
space"). A freed port rests for a quarantine period before reuse (RFC 6888
REQ-8), and fresh ports are picked at random, not sequentially (RFC 6056).
The quarantine keeps a port from passing to *another* host too soon; the host
that released it may take it back at once (an agent restarted within the
quarantine gets the ports and SPIs its peers' configs name).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any

__pure__ = True

DYNAMIC_LOW = 1024
PORT_HIGH = 65535


@dataclass
class PortSpace:
    low: int = DYNAMIC_LOW
    high: int = PORT_HIGH
    quarantine: float = 120.0
    rng: random.Random = field(default_factory=random.Random)
    _in_use: set[int] = field(default_factory=set)
    _resting: dict[int, float] = field(default_factory=dict)
    _rest_heap: list[tuple[float, int]] = field(default_factory=list)
    _rested_by: dict[int, str] = field(default_factory=dict)  # resting port -> the host that released it
    _changed: set[int] | None = None  # ports taken, released or woken since take_changed(); None: untracked

    def reserve(self, now: float, preferred: int | None = None, owner: str | None = None) -> int | None:
        """A free port: ``preferred`` if it is free (port preservation), else a random one.

        Returns None when the space is exhausted.
        """
        self._wake(now)
        if preferred is not None and self._take_back(preferred, owner):
            return preferred
        if preferred is not None and self.is_free(preferred, now):
            return self._take(preferred)
        size = self.high - self.low + 1
        if len(self._in_use) + len(self._resting) >= size:
            return None
        for _ in range(64):
            port = self.rng.randint(self.low, self.high)
            if port not in self._in_use and port not in self._resting:
                return self._take(port)
        start = self.rng.randint(self.low, self.high)
        for offset in range(size):
            port = self.low + (start - self.low + offset) % size
            if port not in self._in_use and port not in self._resting:
                return self._take(port)
        return None

    def _take(self, port: int) -> int:
        self._in_use.add(port)
        self._note(port)
        return port

    def _note(self, port: int) -> None:
        if self._changed is not None:
            self._changed.add(port)

    def claim(self, port: int, now: float, owner: str | None = None) -> bool:
        """Take a specific port (a client asked for it); False if taken, or resting from another owner."""
        self._wake(now)
        if self._take_back(port, owner):
            return True
        if not self.is_free(port, now, any_range=True):
            return False
        self._take(port)
        return True

    def release(self, port: int, now: float, owner: str | None = None) -> None:
        """Give a port back; it rests for the quarantine period first (except for ``owner``)."""
        if port in self._in_use:
            self._in_use.discard(port)
            self._note(port)
            until = now + self.quarantine
            self._resting[port] = until
            if owner is not None:
                self._rested_by[port] = owner
            heapq.heappush(self._rest_heap, (until, port))

    def is_free(self, port: int, now: float, any_range: bool = False) -> bool:
        self._wake(now)
        in_range = self.low <= port <= self.high or any_range
        return in_range and port not in self._in_use and port not in self._resting

    def in_use(self) -> frozenset[int]:
        return frozenset(self._in_use)

    def _take_back(self, port: int, owner: str | None) -> bool:
        """``owner`` takes back a port it released that is still resting."""
        if owner is None or port not in self._resting or self._rested_by.get(port) != owner:
            return False
        del self._resting[port], self._rested_by[port]  # its heap item is skipped when it comes due
        self._take(port)
        return True

    def _wake(self, now: float) -> None:
        while self._rest_heap and self._rest_heap[0][0] <= now:
            until, port = heapq.heappop(self._rest_heap)
            if self._resting.get(port) == until:
                del self._resting[port]
                self._rested_by.pop(port, None)
                self._note(port)

    # ------------------------------------------- persistence (nat_app/state.py, nat_app/store.py)
    # What a restarted controller must not hand out: each taken port is one record, ``None`` in use,
    # ``[until, owner]`` resting (owner: the host that may take it back, or None), so that an event
    # writes the ports it touched, never the whole space (``natlab bench nat-core``).

    def export(self) -> dict[str, Any]:
        """The space's range (its ports are :meth:`port_records`)."""
        return {"low": self.low, "high": self.high}

    def port_records(self, ports: set[int] | None = None) -> dict[int, list[Any] | None]:
        """Each taken port of ``ports`` (default: all of them) -> its record; free ones are left out."""
        if ports is None:
            ports = self._in_use | self._resting.keys()
        return {p: None if p in self._in_use else [self._resting[p], self._rested_by.get(p)]
                for p in ports if p in self._in_use or p in self._resting}

    def take_changed(self) -> set[int]:
        """Ports taken, released or woken since the last call (the first call starts the tracking:
        what came before it the caller reads whole, with ``port_records()``)."""
        ports, self._changed = self._changed or set(), set()
        return ports

    @classmethod
    def restored(cls, saved: dict[str, Any], quarantine: float, rng: random.Random) -> PortSpace:
        """A space rebuilt from ``export()`` (or from a schema-3 file's, which listed its ports inline);
        KeyError/ValueError/TypeError if ``saved`` is not one."""
        space = cls(int(saved["low"]), int(saved["high"]), quarantine, rng)
        for port in saved.get("in_use", ()):
            space.restore_port(int(port), None)
        for port, until, owner in saved.get("resting", ()):
            space.restore_port(int(port), [until, owner])
        return space

    def restore_port(self, port: int, record: list[Any] | None) -> None:
        """One saved port record; ValueError for a port saved twice or a record that is not one."""
        if not isinstance(port, int) or port in self._in_use or port in self._resting:
            raise ValueError(f"saved port {port!r} is not an int or is saved twice")
        if record is None:
            self._in_use.add(port)
            return
        until, owner = record
        self._resting[port] = float(until)
        heapq.heappush(self._rest_heap, (float(until), port))
        if owner is not None:
            self._rested_by[port] = str(owner)
