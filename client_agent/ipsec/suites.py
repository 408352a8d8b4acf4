"""Every algorithm combination an SA accepts, as data: for test matrices, benchmarks and reports.

A :class:`Suite` is a protocol with its transforms and key size, without keys
or addresses; :meth:`Suite.sa` makes a :class:`SecurityAssociation` of it with
fresh keys. :func:`all_suites` derives the list from the algorithm tables and
the SA's own validation, so a new algorithm joins every matrix by itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from client_agent.ipsec.algorithms import ENCRYPTION, INTEGRITY
from client_agent.ipsec.sa import Mode, Protocol, SecurityAssociation


@dataclass(frozen=True)
class Suite:
    protocol: Protocol
    encryption: str
    keymat_length: int
    integrity: str

    @property
    def name(self) -> str:
        """A short label such as ``esp:AES_CBC-128:HMAC_SHA1_96`` or ``ah:HMAC_SHA2_256_128``."""
        integrity = self.integrity.removeprefix("AUTH_")
        if self.protocol is Protocol.AH:
            return f"ah:{integrity}"
        encryption = self.encryption.removeprefix("ENCR_")
        key_bits = (self.keymat_length - (4 if ENCRYPTION[self.encryption].combined_mode else 0)) * 8
        return f"esp:{encryption}-{key_bits}:{integrity}" if key_bits else f"esp:{encryption}:{integrity}"

    def sa(
        self, spi: int, mode: Mode | str = Mode.TRANSPORT, *, src: str | None = None, dst: str | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> SecurityAssociation:
        """An SA of this suite with keys drawn from ``random``."""
        return SecurityAssociation(
            spi=spi, protocol=self.protocol, mode=mode if isinstance(mode, Mode) else Mode(mode.lower()), src=src, dst=dst,
            encryption=self.encryption, enc_key=random(self.keymat_length),
            integrity=self.integrity, auth_key=random(INTEGRITY[self.integrity].key_length),
        )


def all_suites() -> list[Suite]:
    """Every (protocol, encryption, key size, integrity) that :class:`SecurityAssociation` accepts."""
    suites = []
    for protocol in Protocol:
        for encryption in ENCRYPTION.values():
            for keymat_length in encryption.keymat_lengths:
                for integrity in INTEGRITY.values():
                    suite = Suite(protocol, encryption.name, keymat_length, integrity.name)
                    try:
                        suite.sa(spi=256, random=bytes)
                    except ValueError:
                        continue
                    suites.append(suite)
    return suites


def suite(name: str) -> Suite:
    """The suite labelled ``name`` (see :attr:`Suite.name`)."""
    for candidate in all_suites():
        if candidate.name == name:
            return candidate
    raise ValueError(f"unknown suite {name!r}; known: {', '.join(s.name for s in all_suites())}")
