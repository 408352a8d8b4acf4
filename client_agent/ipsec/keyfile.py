"""Wireshark's ``esp_sa`` key file, so that anyone can open a capture decrypted.

Wireshark keeps ESP SAs in a UAT table, the file ``esp_sa`` in its
configuration directory (``$WIRESHARK_CONFIG_DIR`` for tshark). Wireshark and
tshark 4.0 read 8 quoted fields per line::

    "IPv4","<src|*>","<dst|*>","0x<spi>","<encryption>","0x<key>","<authentication>","0x<key>"

with the algorithm labels of :mod:`client_agent.ipsec.algorithms`. For AES-GCM
the key is key + salt and the authentication is ``"NULL",""``. AH has no key
table in Wireshark: AH SAs are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable

from client_agent.ipsec.sa import Protocol, SAState, SecurityAssociation

FILENAME = "esp_sa"


def esp_sa_line(sa: SecurityAssociation) -> str:
    """The ``esp_sa`` line for one ESP SA."""
    if sa.protocol is not Protocol.ESP:
        raise ValueError(f"protocol={sa.protocol.name}: Wireshark's esp_sa table holds ESP SAs only")
    fields = (
        "IPv4", sa.src or "*", sa.dst or "*", f"0x{sa.spi:08x}",
        sa.encryption_algorithm.wireshark, _hex(sa.enc_key),
        sa.integrity_algorithm.wireshark, _hex(sa.auth_key),
    )
    return ",".join(f'"{value}"' for value in fields)


def esp_sa_file(sas: Iterable[SecurityAssociation | SAState]) -> str:
    """The whole ``esp_sa`` file for ``sas`` (parameters or running states); AH SAs are left out."""
    params = (sa.sa if isinstance(sa, SAState) else sa for sa in sas)
    return "".join(esp_sa_line(sa) + "\n" for sa in params if sa.protocol is Protocol.ESP)


def _hex(key: bytes) -> str:
    return f"0x{key.hex()}" if key else ""
