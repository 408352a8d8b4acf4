"""The Security Association Database (RFC 4301 section 4.4.2).

Inbound SAs are found by SPI and protocol, and by destination when the SA names
one: the longest match of section 4.1 ("SPI + destination", then "SPI"
alone). Outbound SAs are reached through the SPD, which points at their
:class:`SAState`; they are kept here too, so that one place lists every SA
(for counters and the Wireshark key file).
"""

from __future__ import annotations

from collections.abc import Iterator

from client_agent.ipsec.errors import NoSA
from client_agent.ipsec.sa import SAState, SecurityAssociation

_Key = tuple[int, int, bytes | None]  # protocol, SPI, destination (None: any)


class SAD:
    """Inbound and outbound SAs with their running state."""

    def __init__(self) -> None:
        self._inbound: dict[_Key, SAState] = {}
        self._outbound: list[SAState] = []

    def add_inbound(self, sa: SecurityAssociation) -> SAState:
        """Install an SA for received traffic; refuses a second SA with the same SPI, protocol and destination."""
        state = SAState(sa)
        key = (int(sa.protocol), sa.spi, state.dst_bytes)
        if key in self._inbound:
            raise ValueError(f"spi=0x{sa.spi:08x}: an inbound {sa.protocol.name} SA for dst={sa.dst} already exists")
        self._inbound[key] = state
        return state

    def add_outbound(self, sa: SecurityAssociation) -> SAState:
        """Install an SA for sent traffic; point an SPD policy at the returned state."""
        state = SAState(sa)
        self._outbound.append(state)
        return state

    def lookup(self, protocol: int, spi: int, dst: bytes | None = None) -> SAState:
        """The inbound SA for a received packet; ``dst`` is its 4-byte destination address."""
        state = self._inbound.get((protocol, spi, dst)) or self._inbound.get((protocol, spi, None))
        if state is None:
            raise NoSA(f"no inbound SA for protocol {protocol}, SPI 0x{spi:08x}")
        return state

    def remove(self, state: SAState) -> None:
        """Delete an SA (inbound or outbound)."""
        sa = state.sa
        key = (int(sa.protocol), sa.spi, state.dst_bytes)
        if self._inbound.get(key) is state:
            del self._inbound[key]
        elif state in self._outbound:
            self._outbound.remove(state)
        else:
            raise KeyError(f"SA 0x{sa.spi:08x} is not in this SAD")

    @property
    def inbound(self) -> list[SAState]:
        return list(self._inbound.values())

    @property
    def outbound(self) -> list[SAState]:
        return list(self._outbound)

    def __iter__(self) -> Iterator[SAState]:
        yield from self._outbound
        yield from self._inbound.values()

    def __len__(self) -> int:
        return len(self._outbound) + len(self._inbound)
