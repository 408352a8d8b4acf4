"""Two IKE endpoints wired back to back in memory, for the IKE unit tests."""

from __future__ import annotations

from client_agent.ike.config import IkeConfig
from client_agent.ike.endpoint import IkeEndpoint
from client_agent.ike.events import ChildEstablished, IkeEstablished

H1 = ("10.0.0.1", 500)
SRV = ("203.0.113.100", 500)
PSK = b"correct horse battery staple"


def configs(**options) -> tuple[IkeConfig, IkeConfig]:
    """An initiator (h1) and responder (srv1) config pair; ``options`` go to both."""
    both = dict(psk=PSK, **options)
    left = IkeConfig.build(local_id="h1.natlab", remote_id="srv1.natlab", local_ts=("10.0.0.1",),
                           remote_ts=("203.0.113.100",), **both)
    right = IkeConfig.build(local_id="srv1.natlab", remote_id="h1.natlab", local_ts=("203.0.113.100",),
                            remote_ts=("10.0.0.0/24",), **both)
    return left, right


class Pair:
    """An initiator endpoint and a responder endpoint, with a lossless (or lossy) wire between them."""

    def __init__(self, left: IkeConfig, right: IkeConfig, now: float = 0.0) -> None:
        self.now = now
        self.a = IkeEndpoint(None, H1)
        self.b = IkeEndpoint(right, SRV)
        self.left = left
        self.events = {"a": [], "b": []}
        self.wire: list[tuple[str, bytes]] = []

    def start(self, spi: bytes | None = None):
        return self.a.initiate(self.left, SRV, self.now, spi)

    def pump(self, drop=lambda side, data: False, rounds: int = 20) -> None:
        """Move datagrams both ways until quiet, collecting events; ``drop`` decides losses."""
        for _ in range(rounds):
            moved = False
            for side, src, dst, src_addr in (("a", self.a, self.b, H1), ("b", self.b, self.a, SRV)):
                for data, _addr in src.datagrams_to_send():
                    self.wire.append((side, data))
                    moved = True
                    if not drop(side, data):
                        dst.receive_datagram(data, src_addr, self.now)
            for side, ep in (("a", self.a), ("b", self.b)):
                self.events[side] += [e for _, e in ep.next_events()]
            if not moved:
                return

    def established(self, side: str) -> list[IkeEstablished]:
        return [e for e in self.events[side] if isinstance(e, IkeEstablished)]

    def children(self, side: str) -> list:
        return [e.child for e in self.events[side] if isinstance(e, ChildEstablished)]
