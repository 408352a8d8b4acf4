"""Wireshark's ``esp_sa`` key file, so that anyone can open a capture decrypted.

Wireshark keeps ESP SAs in a UAT table, the file ``esp_sa`` in its
configuration directory (``$WIRESHARK_CONFIG_DIR`` for tshark). Wireshark and
tshark 4.0 read 8 quoted fields per line::

    "IPv4","<src|*>","<dst|*>","0x<spi>","<encryption>","0x<key>","<authentication>","0x<key>"

with the algorithm labels of :mod:`client_agent.ipsec.algorithms`. For AES-GCM
the key is key + salt and the authentication is ``"NULL",""``. AH has no key
table in Wireshark: AH SAs are skipped there, and go to ``ah_sa`` instead, in
the same 8 fields (encryption ``"NULL",""``), for scapy and people: an IKE-keyed
agent's AH keys exist nowhere else. :func:`parse_key_file` reads either file
back into SAs (the conformance oracles check captures with the keys the agents
wrote, not with keys of their own); a line it cannot read is refused by number.
"""

from __future__ import annotations

from collections.abc import Iterable

from client_agent.ipsec.algorithms import ENCRYPTION, INTEGRITY
from client_agent.ipsec.sa import Mode, Protocol, SAState, SecurityAssociation

FILENAME = "esp_sa"
AH_FILENAME = "ah_sa"  # not Wireshark's: AH keys in esp_sa's format
_BY_LABEL = {**{("enc", a.wireshark): a.name for a in ENCRYPTION.values()},
             **{("auth", a.wireshark): a.name for a in INTEGRITY.values()}}


def esp_sa_line(sa: SecurityAssociation) -> str:
    """The ``esp_sa`` line for one ESP SA."""
    if sa.protocol is not Protocol.ESP:
        raise ValueError(f"protocol={sa.protocol.name}: Wireshark's esp_sa table holds ESP SAs only")
    return _line(sa)


def ah_sa_line(sa: SecurityAssociation) -> str:
    """The ``ah_sa`` line for one AH SA: esp_sa's fields, encryption ``"NULL",""``."""
    if sa.protocol is not Protocol.AH:
        raise ValueError(f"protocol={sa.protocol.name}: the ah_sa file holds AH SAs only")
    return _line(sa)


def _line(sa: SecurityAssociation) -> str:
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


def ah_sa_file(sas: Iterable[SecurityAssociation | SAState]) -> str:
    """The ``ah_sa`` file for ``sas``; ESP SAs are left out (they go to ``esp_sa``)."""
    params = (sa.sa if isinstance(sa, SAState) else sa for sa in sas)
    return "".join(ah_sa_line(sa) + "\n" for sa in params if sa.protocol is Protocol.AH)


def parse_key_file(text: str, protocol: Protocol, mode: Mode) -> list[SecurityAssociation]:
    """The SAs of an ``esp_sa`` or ``ah_sa`` file (``protocol`` says which; neither file records the mode).

    A line that is not 8 quoted fields with known labels, hex keys and an SPI
    raises ValueError naming its number: a key file is evidence, and a
    misread one must not quietly verify nothing.
    """
    sas = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                sas.append(_parse_line(line, protocol, mode))
            except (ValueError, KeyError) as err:
                raise ValueError(f"key file line {number}: {err}") from None
    return sas


def _parse_line(line: str, protocol: Protocol, mode: Mode) -> SecurityAssociation:
    fields = [f.strip() for f in line.split(",")]
    if len(fields) != 8 or not all(len(f) >= 2 and f[0] == f[-1] == '"' for f in fields):
        raise ValueError(f"{len(fields)} fields, expected 8 quoted ones")
    family, src, dst, spi, enc, enc_key, auth, auth_key = (f[1:-1] for f in fields)
    if family != "IPv4" or not spi.startswith("0x"):
        raise ValueError(f"family {family!r}, SPI {spi!r}: expected IPv4 and a hex SPI")
    return SecurityAssociation(
        spi=int(spi, 16), protocol=protocol, mode=mode, encryption=_BY_LABEL[("enc", enc)], enc_key=_unhex(enc_key),
        integrity=_BY_LABEL[("auth", auth)], auth_key=_unhex(auth_key),
        src=None if src == "*" else src, dst=None if dst == "*" else dst)


def _unhex(text: str) -> bytes:
    return bytes.fromhex(text[2:]) if text.startswith("0x") else bytes.fromhex(text)


def _hex(key: bytes) -> str:
    return f"0x{key.hex()}" if key else ""
