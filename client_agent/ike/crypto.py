"""IKEv2's cryptography (RFC 7296 sections 2.13-2.17, 2.23, 3.14; RFC 5282; RFC 5903; RFC 8031), from ``cryptography``.

Key exchange groups, the PRF and prf+, SKEYSEED and the seven IKE SA keys in
section 2.14 order, CHILD_SA KEYMAT (section 2.17), the pre-shared-key AUTH
value (section 2.15), NAT detection hashes (section 2.23), stateless cookies
(section 2.6) and the SK payload's sealing with AES-CBC + HMAC or AES-GCM.
Randomness comes from a ``random`` callable so tests can be deterministic.
"""

from __future__ import annotations

import hashlib
import hmac as std_hmac
import os
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import dh, ec, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.utils import CryptographyDeprecationWarning

from client_agent.ike.codec import Malformed
from client_agent.ike.registry import DhGroup, Encr, Integ, Prf

Random = Callable[[int], bytes]

# RFC 3526 section 3, the 2048-bit MODP group (group 14); generator 2.
MODP_2048_PRIME = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)


# cryptography 50 deprecates finite-field DH; group 14 is still RFC 8247's SHOULD and the seed era's group.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
    _MODP_2048 = dh.DHParameterNumbers(MODP_2048_PRIME, 2).parameters()

# ---------------------------------------------------------------- key exchange


class KeyExchange:
    """One side's ephemeral key for a group: :attr:`public` goes into KE, :meth:`shared` gives g^ir."""

    public: bytes

    def shared(self, peer: bytes) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError


class ModpKeyExchange(KeyExchange):
    """Group 14: public value and shared secret padded to the prime's 256 bytes (sections 3.4 and 2.14)."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
            self._key = _MODP_2048.generate_private_key()
        self.public = self._key.public_key().public_numbers().y.to_bytes(256, "big")

    def shared(self, peer: bytes) -> bytes:
        y = int.from_bytes(peer, "big")
        if len(peer) != 256 or not 1 < y < MODP_2048_PRIME - 1:
            raise Malformed("bad_ke_value", "MODP-2048 public value out of range")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
            peer_key = dh.DHPublicNumbers(y, _MODP_2048.parameter_numbers()).public_key()
            return self._key.exchange(peer_key).rjust(256, b"\0")


class EcpKeyExchange(KeyExchange):
    """Group 19: public value x | y, shared secret the x coordinate (RFC 5903 sections 7 and 9)."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        numbers = self._key.public_key().public_numbers()
        self.public = numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")

    def shared(self, peer: bytes) -> bytes:
        if len(peer) != 64:
            raise Malformed("bad_ke_value", f"ECP-256 public value of {len(peer)} bytes")
        try:
            peer_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + peer)
        except ValueError:  # not on the curve
            raise Malformed("bad_ke_value", "ECP-256 point not on the curve") from None
        return self._key.exchange(ec.ECDH(), peer_key)


class X25519KeyExchange(KeyExchange):
    """Group 31 (RFC 8031 section 2): 32-byte public values; an all-zero result is refused."""

    def __init__(self) -> None:
        self._key = x25519.X25519PrivateKey.generate()
        self.public = self._key.public_key().public_bytes_raw()

    def shared(self, peer: bytes) -> bytes:
        if len(peer) != 32:
            raise Malformed("bad_ke_value", f"Curve25519 public value of {len(peer)} bytes")
        try:
            return self._key.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
        except ValueError:
            raise Malformed("bad_ke_value", "Curve25519 shared secret is zero") from None


KEY_EXCHANGES: dict[int, type[KeyExchange]] = {
    DhGroup.MODP_2048: ModpKeyExchange, DhGroup.ECP_256: EcpKeyExchange, DhGroup.CURVE25519: X25519KeyExchange,
}
KE_LENGTHS = {DhGroup.MODP_2048: 256, DhGroup.ECP_256: 64, DhGroup.CURVE25519: 32}

# ---------------------------------------------------------------- PRF and key derivation

PRF_HASHES: dict[int, type[hashes.HashAlgorithm]] = {Prf.PRF_HMAC_SHA1: hashes.SHA1, Prf.PRF_HMAC_SHA2_256: hashes.SHA256}


def prf(prf_id: int, key: bytes, data: bytes) -> bytes:
    """The negotiated PRF (HMAC, RFC 2104 / RFC 4868)."""
    mac = hmac.HMAC(key, PRF_HASHES[prf_id]())
    mac.update(data)
    return mac.finalize()


def prf_plus(prf_id: int, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (section 2.13): T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n), concatenated."""
    out, block, n = b"", b"", 1
    while len(out) < length:
        if n > 255:
            raise ValueError("prf+ cannot produce more than 255 blocks")
        block = prf(prf_id, key, block + seed + bytes([n]))
        out += block
        n += 1
    return out[:length]


def prf_length(prf_id: int) -> int:
    return PRF_HASHES[prf_id]().digest_size


@dataclass(frozen=True)
class IkeSuite:
    """The negotiated IKE SA transforms; ``encr_key_bits`` excludes GCM's 4-byte salt."""

    encr: int
    encr_key_bits: int
    prf: int
    integ: int
    dh: int

    @property
    def aead(self) -> bool:
        return self.encr == Encr.ENCR_AES_GCM_16

    @property
    def encr_key_len(self) -> int:
        """Key bytes per direction, with GCM's salt (RFC 5282 section 7.1)."""
        return self.encr_key_bits // 8 + (4 if self.aead else 0)

    @property
    def integ_key_len(self) -> int:
        return 0 if self.aead else INTEG_ALGORITHMS[self.integ][1]


@dataclass(frozen=True)
class IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} (section 2.14), in that order."""

    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


def derive_ike_keys(suite: IkeSuite, skeyseed: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes) -> IkeKeys:
    """Section 2.14: the seven keys from prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)."""
    p, a, e = prf_length(suite.prf), suite.integ_key_len, suite.encr_key_len
    sizes = (p, a, a, e, e, p, p)
    stream = prf_plus(suite.prf, skeyseed, ni + nr + spi_i + spi_r, sum(sizes))
    parts, offset = [], 0
    for size in sizes:
        parts.append(stream[offset: offset + size])
        offset += size
    return IkeKeys(*parts)


def skeyseed(prf_id: int, ni: bytes, nr: bytes, shared: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (section 2.14)."""
    return prf(prf_id, ni + nr, shared)


def rekey_skeyseed(prf_id: int, old_sk_d: bytes, shared: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYSEED of a rekeyed IKE SA = prf(SK_d (old), g^ir (new) | Ni | Nr) (section 2.18)."""
    return prf(prf_id, old_sk_d, shared + ni + nr)


def child_keymat(prf_id: int, sk_d: bytes, ni: bytes, nr: bytes, length: int, shared: bytes = b"") -> bytes:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (section 2.17)."""
    return prf_plus(prf_id, sk_d, shared + ni + nr, length)


KEY_PAD = b"Key Pad for IKEv2"


def psk_auth(prf_id: int, psk: bytes, signed_message: bytes, nonce: bytes, id_key: bytes, id_body: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), message | nonce | prf(SK_px, ID')) (section 2.15)."""
    maced_id = prf(prf_id, id_key, id_body)
    return prf(prf_id, prf(prf_id, psk, KEY_PAD), signed_message + nonce + maced_id)


def natd_hash(spi_i: bytes, spi_r: bytes, address: bytes, port: int) -> bytes:
    """NAT detection data = SHA-1(SPIi | SPIr | IP | Port) (section 2.23)."""
    return hashlib.sha1(spi_i + spi_r + address + struct.pack("!H", port)).digest()


def cookie(secret: bytes, version: int, ni: bytes, address: bytes, spi_i: bytes) -> bytes:
    """Cookie = VersionIDofSecret | Hash(Ni | IPi | SPIi | secret) (section 2.6), HMAC-SHA-256 here."""
    return bytes([version]) + std_hmac.new(secret, ni + address + spi_i, hashlib.sha256).digest()[:16]


# ---------------------------------------------------------------- the SK payload

INTEG_ALGORITHMS: dict[int, tuple[type[hashes.HashAlgorithm], int, int]] = {
    Integ.AUTH_HMAC_SHA1_96: (hashes.SHA1, 20, 12),  # hash, key length, ICV length
    Integ.AUTH_HMAC_SHA2_256_128: (hashes.SHA256, 32, 16),
}


class SkCipher:
    """Seals and opens one direction's SK payloads (section 3.14; RFC 5282 for AES-GCM).

    :meth:`seal` takes the message's plaintext prefix (IKE header + SK generic
    header, with the final length) and the inner payloads; :meth:`open` takes
    the whole message and where the SK body starts. A bad ICV or padding
    raises :class:`Malformed` before anything inside is looked at.
    """

    def __init__(self, suite: IkeSuite, encr_key: bytes, integ_key: bytes, random: Random = os.urandom) -> None:
        self._suite, self._random = suite, random
        if suite.aead:
            self._aead, self._salt = AESGCM(encr_key[:-4]), encr_key[-4:]
            self.iv_len, self.icv_len, self.block = 8, 16, 4
        else:
            self._key = encr_key
            digest, _, self.icv_len = INTEG_ALGORITHMS[suite.integ]
            self._mac = hmac.HMAC(integ_key, digest())
            self.iv_len, self.block = 16, 16

    def sealed_length(self, plaintext_len: int) -> int:
        """Length of IV | ciphertext | ICV for ``plaintext_len`` bytes of inner payloads."""
        return self.iv_len + self._padded(plaintext_len) + self.icv_len

    def _padded(self, n: int) -> int:
        return (n + 1 + self.block - 1) // self.block * self.block

    def seal(self, prefix: bytes, inner: bytes) -> bytes:
        """IV | encrypted(inner | padding | pad length) | ICV."""
        pad = self._padded(len(inner)) - len(inner) - 1
        plaintext = inner + bytes(pad) + bytes([pad])
        iv = self._random(self.iv_len)
        if self._suite.aead:
            return iv + self._aead.encrypt(self._salt + iv, plaintext, prefix)
        encryptor = Cipher(algorithms.AES(self._key), modes.CBC(iv)).encryptor()
        body = iv + encryptor.update(plaintext) + encryptor.finalize()
        mac = self._mac.copy()
        mac.update(prefix + body)
        return body + mac.finalize()[: self.icv_len]

    def open(self, message: bytes, body_offset: int) -> bytes:
        """The inner payloads of the SK payload starting at ``body_offset`` (after its generic header)."""
        body = message[body_offset:]
        if len(body) < self.iv_len + self.block + self.icv_len:
            raise Malformed("truncated_sk", f"{len(body)} bytes")
        iv = body[: self.iv_len]
        if self._suite.aead:
            try:
                plaintext = self._aead.decrypt(self._salt + iv, body[self.iv_len:], message[:body_offset])
            except InvalidTag:
                raise Malformed("bad_icv", "AES-GCM tag mismatch") from None
        else:
            plaintext = self._open_cbc(message, body_offset, iv)
        pad = plaintext[-1]
        if pad + 1 > len(plaintext):
            raise Malformed("bad_padding", f"pad length {pad}")
        return plaintext[: -pad - 1]

    def _open_cbc(self, message: bytes, body_offset: int, iv: bytes) -> bytes:
        icv = message[-self.icv_len:]
        mac = self._mac.copy()
        mac.update(message[: -self.icv_len])
        if not std_hmac.compare_digest(mac.finalize()[: self.icv_len], icv):
            raise Malformed("bad_icv", "HMAC mismatch")
        ciphertext = message[body_offset + self.iv_len: -self.icv_len]
        if len(ciphertext) % 16:
            raise Malformed("bad_padding", "ciphertext is not a whole number of blocks")
        decryptor = Cipher(algorithms.AES(self._key), modes.CBC(iv)).decryptor()
        return decryptor.update(ciphertext) + decryptor.finalize()
