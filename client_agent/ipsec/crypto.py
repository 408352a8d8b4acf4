"""The per-SA crypto objects, built once from the keys and reused for every packet.

Ciphers share one small interface used by ESP (RFC 4303 section 3.3.2):
``pad_to`` (the alignment of plaintext + trailer), ``iv_len``, ``icv_len`` (the
tag of a combined-mode cipher, 0 otherwise), ``new_iv(seq)``,
``encrypt(aad, iv, plaintext)`` and ``decrypt(aad, iv, ciphertext)``; ``aad``
only matters to combined-mode ciphers. :class:`Hmac` computes truncated ICVs
for ESP and AH.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client_agent.ipsec.errors import BadICV, Malformed


class NullCipher:
    """NULL encryption (RFC 2410): no IV, the plaintext is sent as is, 4-byte alignment."""

    pad_to = 4
    iv_len = 0
    icv_len = 0

    def __init__(self, keymat: bytes = b"") -> None:
        pass

    def new_iv(self, seq: int) -> bytes:
        return b""

    def encrypt(self, aad: bytes, iv: bytes, plaintext: bytes) -> bytes:
        return plaintext

    def decrypt(self, aad: bytes | memoryview, iv: bytes | memoryview, ciphertext: bytes | memoryview) -> bytes:
        return bytes(ciphertext)


class AesCbc:
    """AES-CBC with an explicit random 16-byte IV per packet (RFC 3602 sections 2.1 and 3).

    Creating a CBC context costs about four times as much as encrypting a
    1400-byte packet with it, so one encryptor and one decryptor live as long as
    the SA. CBC chains each block on the ciphertext block before it; to start a
    packet on its own IV, the first plaintext block is XORed with
    ``IV ^ last``, where ``last`` is the last ciphertext block the context
    produced (or consumed, when decrypting). The context's own XOR with ``last``
    cancels out, leaving ``E(P1 ^ IV)``: bit for bit what a fresh context per
    packet gives (the RFC 3602 section 4 vectors and scapy check this).
    """

    pad_to = 16
    iv_len = 16
    icv_len = 0

    def __init__(self, key: bytes) -> None:
        aes = algorithms.AES(key)
        self._encryptor = Cipher(aes, modes.CBC(bytes(16))).encryptor()
        self._decryptor = Cipher(aes, modes.CBC(bytes(16))).decryptor()
        self._encrypted_last = 0
        self._decrypted_last = 0

    def new_iv(self, seq: int) -> bytes:
        """RFC 3602 section 3: the IV MUST be chosen at random and be unpredictable."""
        return os.urandom(16)

    def encrypt(self, aad: bytes, iv: bytes, plaintext: bytes) -> bytes:
        if not plaintext or len(plaintext) % 16:  # a partial block would stay in the context and shift the chain
            raise ValueError(f"AES-CBC plaintext of {len(plaintext)} bytes is not a whole number of blocks")
        first = int.from_bytes(plaintext[:16], "big") ^ int.from_bytes(iv, "big") ^ self._encrypted_last
        ciphertext = self._encryptor.update(first.to_bytes(16, "big") + plaintext[16:])
        self._encrypted_last = int.from_bytes(ciphertext[-16:], "big")
        return ciphertext

    def decrypt(self, aad: bytes | memoryview, iv: bytes | memoryview, ciphertext: bytes | memoryview) -> bytes:
        if not ciphertext or len(ciphertext) % 16:
            raise Malformed(f"AES-CBC ciphertext of {len(ciphertext)} bytes is not a whole number of blocks")
        plaintext = self._decryptor.update(ciphertext)
        first = int.from_bytes(plaintext[:16], "big") ^ self._decrypted_last ^ int.from_bytes(iv, "big")
        self._decrypted_last = int.from_bytes(ciphertext[-16:], "big")
        return first.to_bytes(16, "big") + plaintext[16:]


class AesGcm:
    """AES-GCM with a 16-octet ICV (RFC 4106).

    The keying material is the AES key followed by a 4-byte salt (section 8.1);
    the nonce is salt + the packet's 8-byte explicit IV (section 4); the AAD is
    SPI + sequence number (section 5). The IV only has to be unique per key
    (section 3.1): it is the sequence number, which never repeats within an SA,
    XORed with a random mask per SA, so that two SAs configured by hand with the
    same key (an easy mistake with manual keying) do not reuse nonces either.
    """

    pad_to = 4
    iv_len = 8
    icv_len = 16

    def __init__(self, keymat: bytes) -> None:
        self._aead = AESGCM(keymat[:-4])
        self._salt = keymat[-4:]
        self._iv_mask = int.from_bytes(os.urandom(8), "big")

    def new_iv(self, seq: int) -> bytes:
        return (seq ^ self._iv_mask).to_bytes(8, "big")

    def encrypt(self, aad: bytes, iv: bytes, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self._salt + iv, plaintext, aad)

    def decrypt(self, aad: bytes | memoryview, iv: bytes | memoryview, ciphertext: bytes | memoryview) -> bytes:
        if len(ciphertext) < self.icv_len:
            raise Malformed("AES-GCM payload shorter than its ICV")
        try:
            return self._aead.decrypt(self._salt + iv, ciphertext, aad)
        except InvalidTag:
            raise BadICV("AES-GCM tag mismatch") from None


class Hmac:
    """HMAC (RFC 2104) truncated to ``icv_len`` bytes (RFC 2403 and 2404 section 2, RFC 4868 section 2.3).

    The keyed state is computed once; each ICV starts from a copy of it.
    """

    def __init__(self, key: bytes, hash_algorithm: type[hashes.HashAlgorithm], icv_len: int) -> None:
        self._keyed = hmac.HMAC(key, hash_algorithm())
        self.icv_len = icv_len

    def icv(self, *parts: bytes | bytearray | memoryview) -> bytes:
        """The truncated HMAC of the concatenation of ``parts``."""
        mac = self._keyed.copy()
        for part in parts:
            mac.update(part)
        return mac.finalize()[: self.icv_len]
