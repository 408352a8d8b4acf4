"""The algorithms an SA can name, as data, keyed by their IANA IKEv2 names.

Names and transform IDs are those of the IANA "Internet Key Exchange Version 2
(IKEv2) Parameters" registry (Transform Type 1, encryption; Transform Type 3,
integrity), so IKE can later map negotiated transforms straight onto these
tables. ``wireshark`` is the label Wireshark/tshark 4.0 expects in its
``esp_sa`` key file (see :mod:`client_agent.ipsec.keyfile`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

from cryptography.hazmat.primitives import hashes

from client_agent.ipsec.crypto import AesCbc, AesGcm, Hmac, NullCipher


class EspCipher(Protocol):
    """What ESP needs from a cipher (implemented in :mod:`client_agent.ipsec.crypto`)."""

    pad_to: int
    iv_len: int
    icv_len: int

    def __init__(self, key: bytes) -> None: ...
    def new_iv(self, seq: int) -> bytes: ...
    def encrypt(self, aad: bytes, iv: bytes, plaintext: bytes) -> bytes: ...
    def decrypt(self, aad: bytes | memoryview, iv: bytes | memoryview, ciphertext: bytes | memoryview) -> bytes: ...


@dataclass(frozen=True)
class EncryptionAlgorithm:
    """An ESP encryption transform; ``keymat_lengths`` include the salt of a combined-mode cipher."""

    name: str
    transform_id: int
    keymat_lengths: tuple[int, ...]
    combined_mode: bool
    rfc: str
    wireshark: str
    new: type[EspCipher]  # the cipher class: keyed by calling it, its sizes are class attributes


@dataclass(frozen=True)
class IntegrityAlgorithm:
    """An ESP/AH integrity transform; ``icv_len`` is the truncated ICV length in bytes."""

    name: str
    transform_id: int
    key_length: int
    icv_len: int
    rfc: str
    wireshark: str
    hash: type[hashes.HashAlgorithm] | None

    def new(self, key: bytes) -> Hmac | None:
        return None if self.hash is None else Hmac(key, self.hash, self.icv_len)


ENCRYPTION: dict[str, EncryptionAlgorithm] = {
    a.name: a
    for a in (
        EncryptionAlgorithm("ENCR_NULL", 11, (0,), False, "RFC 2410", "NULL", NullCipher),
        EncryptionAlgorithm("ENCR_AES_CBC", 12, (16, 24, 32), False, "RFC 3602", "AES-CBC [RFC3602]", AesCbc),
        EncryptionAlgorithm(
            "ENCR_AES_GCM_16", 20, (20, 28, 36), True, "RFC 4106", "AES-GCM with 16 octet ICV [RFC4106]", AesGcm
        ),
    )
}

INTEGRITY: dict[str, IntegrityAlgorithm] = {
    a.name: a
    for a in (
        IntegrityAlgorithm("NONE", 0, 0, 0, "RFC 7296", "NULL", None),
        IntegrityAlgorithm("AUTH_HMAC_MD5_96", 1, 16, 12, "RFC 2403", "HMAC-MD5-96 [RFC2403]", hashes.MD5),
        IntegrityAlgorithm("AUTH_HMAC_SHA1_96", 2, 20, 12, "RFC 2404", "HMAC-SHA-1-96 [RFC2404]", hashes.SHA1),
        IntegrityAlgorithm(
            "AUTH_HMAC_SHA2_256_128", 12, 32, 16, "RFC 4868", "HMAC-SHA-256-128 [RFC4868]", hashes.SHA256
        ),
    )
}

# Spellings people (and scapy) use for the same transforms, lower-case.
_ENCRYPTION_ALIASES = {
    "null": "ENCR_NULL",
    "aes-cbc": "ENCR_AES_CBC",
    "aes-gcm": "ENCR_AES_GCM_16",
    "aes-gcm-16": "ENCR_AES_GCM_16",
}
_INTEGRITY_ALIASES = {
    "null": "NONE",
    "hmac-md5-96": "AUTH_HMAC_MD5_96",
    "hmac-sha1-96": "AUTH_HMAC_SHA1_96",
    "hmac-sha-1-96": "AUTH_HMAC_SHA1_96",
    "hmac-sha-256-128": "AUTH_HMAC_SHA2_256_128",
    "hmac-sha2-256-128": "AUTH_HMAC_SHA2_256_128",
    "sha2-256-128": "AUTH_HMAC_SHA2_256_128",
}


def encryption(name: str) -> EncryptionAlgorithm:
    """The encryption transform called ``name`` (IANA name, any case, or a common alias)."""
    return _lookup(name, ENCRYPTION, _ENCRYPTION_ALIASES, "encryption")


def integrity(name: str) -> IntegrityAlgorithm:
    """The integrity transform called ``name`` (IANA name, any case, or a common alias)."""
    return _lookup(name, INTEGRITY, _INTEGRITY_ALIASES, "integrity")


_T = TypeVar("_T")


def _lookup(name: str, table: dict[str, _T], aliases: dict[str, str], kind: str) -> _T:
    key = name.strip()
    canonical = key.upper() if key.upper() in table else aliases.get(key.lower())
    if canonical is None:
        raise ValueError(f"unknown {kind} algorithm {name!r}; known: {', '.join(table)}")
    return table[canonical]
