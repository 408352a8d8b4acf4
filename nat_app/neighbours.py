"""Next-hop resolution for r1 (RFC 826): which MAC owns an IP on each side,
and which frames wait for an ARP reply."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

__pure__ = True

MAX_WAITING_PER_IP = 16
MAX_WAITING_IPS = 256
ARP_RETRY_S = 1.0


@dataclass
class _Waiting:
    frames: deque[Any] = field(default_factory=lambda: deque(maxlen=MAX_WAITING_PER_IP))
    last_request: float = float("-inf")


class NeighbourCache:
    def __init__(self) -> None:
        self._macs: dict[str, str] = {}
        self._waiting: dict[str, _Waiting] = {}

    def learn(self, ip: str, mac: str) -> list[Any]:
        """Record ``ip`` at ``mac``; return the items that were waiting for it."""
        self._macs[ip] = mac
        waiting = self._waiting.pop(ip, None)
        return list(waiting.frames) if waiting else []

    def lookup(self, ip: str) -> str | None:
        return self._macs.get(ip)

    def wait_for(self, ip: str, item: object, now: float) -> bool:
        """Park ``item`` until ``ip`` resolves; True if an ARP request is due now.

        Bounded per IP and in the number of IPs, so unanswered ARP cannot grow
        memory without limit (the oldest frames are dropped).
        """
        waiting = self._waiting.get(ip)
        if waiting is None:
            if len(self._waiting) >= MAX_WAITING_IPS:
                return False
            waiting = self._waiting[ip] = _Waiting()
        waiting.frames.append(item)
        if now - waiting.last_request >= ARP_RETRY_S:
            waiting.last_request = now
            return True
        return False

    def known(self) -> dict[str, str]:
        return dict(self._macs)

    def restore(self, macs: dict[str, str]) -> None:
        """Saved IP -> MAC bindings (r1's flows name these MACs; re-derived flows need them)."""
        self._macs = {str(ip): str(mac) for ip, mac in macs.items()}
