"""Known-answer tests: the IPsec core against published vectors (sources in tests/vectors/*.json).

Every positive case has a tampered twin that must fail verification.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client_agent.ipsec import esp
from client_agent.ipsec.algorithms import integrity
from client_agent.ipsec.crypto import AesCbc, AesGcm
from client_agent.ipsec.errors import BadICV
from client_agent.ipsec.sa import SAState, SecurityAssociation
from netwire.ipv4 import build_ipv4_header

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]


# --- HMAC: RFC 2202 (MD5, SHA-1), RFC 4231 (SHA-256), RFC 4868 (SHA-256-128 with IPsec key sizes) ---

RFC2202 = load("rfc2202_hmac_md5_sha1.json")
RFC4231 = load("rfc4231_hmac_sha256.json")
RFC4868 = load("rfc4868_hmac_sha256_128.json")
HMAC_CASES = (
    [("AUTH_HMAC_MD5_96", c) for c in RFC2202["md5"]]
    + [("AUTH_HMAC_SHA1_96", c) for c in RFC2202["sha1"]]
    + [("AUTH_HMAC_SHA2_256_128", c) for c in RFC4231["cases"]]
)


@pytest.mark.parametrize(("name", "case"), HMAC_CASES, ids=lambda v: str(v["case"]) if isinstance(v, dict) else v)
def test_hmac_truncated_icv_matches_rfc_digest(name: str, case: dict) -> None:
    """RFC 2202 / RFC 4231: our ICV is the published HMAC truncated to 96 or 128 bits."""
    mac = integrity(name).new(bytes.fromhex(case["key"]))
    data = bytes.fromhex(case["data"])
    icv = mac.icv(data)
    assert icv.hex() == case["digest"][: 2 * len(icv)]
    if "digest_96" in case:  # RFC 2202 case 5 prints the truncated value itself
        assert icv.hex() == case["digest_96"]
    assert mac.icv(flip(data, 0)) != icv


@pytest.mark.parametrize("case", RFC4868["cases"], ids=lambda c: c["case"])
def test_hmac_sha256_128_rfc4868(case: dict) -> None:
    """RFC 4868 section 2.7.2.1: AUTH256 cases with the 32-byte keys an SA uses."""
    mac = integrity("AUTH_HMAC_SHA2_256_128").new(bytes.fromhex(case["key"]))
    assert mac.icv(bytes.fromhex(case["data"])).hex() == case["icv"]
    assert mac.icv(flip(bytes.fromhex(case["data"]), 3)).hex() != case["icv"]


def test_hmac_icv_over_parts_equals_icv_over_whole() -> None:
    """ESP and AH feed the MAC in pieces; the split must not matter (RFC 2202 case 2 data)."""
    mac = integrity("AUTH_HMAC_SHA1_96").new(b"k" * 20)
    data = b"what do ya want for nothing?"
    assert mac.icv(data[:5], memoryview(data)[5:9], data[9:]) == mac.icv(data)


# --- AES-CBC: RFC 3602 section 4 ---

RFC3602 = load("rfc3602_aes_cbc.json")


@pytest.mark.parametrize("case", RFC3602["cipher_cases"], ids=lambda c: f"case{c['case']}")
def test_aes_cbc_rfc3602_cipher_cases(case: dict) -> None:
    """RFC 3602 section 4, cases #1-#4, through the long-lived CBC contexts, twice in a row."""
    cipher = AesCbc(bytes.fromhex(case["key"]))
    iv, plaintext = bytes.fromhex(case["iv"]), bytes.fromhex(case["plaintext"])
    for _ in range(2):  # the second packet must not depend on the first
        ciphertext = cipher.encrypt(b"", iv, plaintext)
        assert ciphertext.hex() == case["ciphertext"]
        assert cipher.decrypt(b"", iv, ciphertext) == plaintext
    assert cipher.decrypt(b"", flip(iv, 0), ciphertext) != plaintext


def _confidentiality_only_state(case: dict) -> SAState:
    """RFC 3602's ESP cases carry no ICV. SecurityAssociation refuses AES-CBC without integrity,
    so build a valid SA and drop its MAC: the vectors pin the encryption and padding alone."""
    tunnel = {"src": "192.0.2.1", "dst": "192.0.2.2"} if case["mode"] == "tunnel" else {}
    sa = SecurityAssociation(
        spi=case["spi"], protocol="esp", mode=case["mode"], encryption="ENCR_AES_CBC",
        enc_key=bytes.fromhex(case["key"]), integrity="AUTH_HMAC_SHA1_96", auth_key=bytes(20), **tunnel,
    )
    state = SAState(sa)
    state.mac = None
    state.seq = case["seq"] - 1
    return state


@pytest.mark.parametrize("case", RFC3602["esp_cases"], ids=lambda c: f"case{c['case']}")
def test_aes_cbc_rfc3602_esp_packets(case: dict) -> None:
    """RFC 3602 section 4, cases #5-#8: whole ESP packets (transport #5-#6, tunnel #7-#8), byte for byte."""
    sender, receiver = _confidentiality_only_state(case), _confidentiality_only_state(case)
    payload = bytes.fromhex(case["payload"])
    if case["mode"] == "tunnel":
        packet = payload
    else:
        header = build_ipv4_header(
            src="10.0.1.1", dst="10.0.2.1", protocol=case["next_header"], payload_len=len(payload)
        )
        packet = header + payload
    protected = esp.encapsulate(packet, sender, iv=bytes.fromhex(case["iv"]))
    assert protected[20:].hex() == case["esp"]
    assert esp.decapsulate(protected, receiver) == packet


# --- AES-GCM: the GCM specification's test cases and RFC 4106 ESP packets ---

GCM_SPEC = load("gcm_spec_test_cases.json")
GCM_ESP = load("draft_mcgrew_gcm_test_01_esp.json")


@pytest.mark.parametrize("case", GCM_SPEC["cases"], ids=lambda c: f"case{c['case']}")
def test_aes_gcm_spec_test_cases_through_rfc4106_keying(case: dict) -> None:
    """McGrew & Viega Appendix B: the 96-bit IV is salt (4 bytes, end of the keying material) + ESP IV (8 bytes)."""
    iv = bytes.fromhex(case["iv"])
    cipher = AesGcm(bytes.fromhex(case["key"]) + iv[:4])
    aad, plaintext = bytes.fromhex(case["aad"]), bytes.fromhex(case["plaintext"])
    sealed = cipher.encrypt(aad, iv[4:], plaintext)
    assert sealed.hex() == case["ciphertext"] + case["tag"]
    assert cipher.decrypt(aad, iv[4:], sealed) == plaintext
    with pytest.raises(BadICV):
        cipher.decrypt(aad, iv[4:], flip(sealed, len(sealed) - 1))


@pytest.mark.parametrize("case", GCM_ESP["cases"], ids=lambda c: c["aad"])
def test_aes_gcm_draft_vectors_cipher(case: dict) -> None:
    """draft-mcgrew-gcm-test-01: every packet's ciphertext and tag (including the ESN ones, cipher only)."""
    cipher = AesGcm(bytes.fromhex(case["key"] + case["salt"]))
    aad, iv = bytes.fromhex(case["aad"]), bytes.fromhex(case["iv"])
    sealed = cipher.encrypt(aad, iv, bytes.fromhex(case["plaintext"]))
    assert sealed.hex() == case["ciphertext"] + case["tag"]
    with pytest.raises(BadICV):
        cipher.decrypt(flip(aad, 7), iv, sealed)


ESP_GCM_PACKETS = [
    c for c in GCM_ESP["cases"] if len(c["aad"]) == 16 and int(c["aad"][:8], 16) >= 256  # 32-bit seq, usable SPI
]


@pytest.mark.parametrize("case", ESP_GCM_PACKETS, ids=lambda c: c["aad"])
def test_aes_gcm_draft_vectors_as_esp_packets(case: dict) -> None:
    """draft-mcgrew-gcm-test-01: our ESP builds the same packet (SPI, seq, IV, ciphertext, ICV) and takes it back."""
    aad = bytes.fromhex(case["aad"])
    spi, seq = int.from_bytes(aad[:4], "big"), int.from_bytes(aad[4:], "big")
    sa = SecurityAssociation(
        spi=spi, protocol="esp", encryption="ENCR_AES_GCM_16", enc_key=bytes.fromhex(case["key"] + case["salt"])
    )
    plaintext = bytes.fromhex(case["plaintext"])
    pad_len, next_header = plaintext[-2], plaintext[-1]
    payload = plaintext[: len(plaintext) - 2 - pad_len]
    header = build_ipv4_header(src="192.0.2.1", dst="192.0.2.2", protocol=next_header, payload_len=len(payload))
    packet = header + payload

    sender = SAState(sa)
    sender.seq = seq - 1
    protected = esp.encapsulate(packet, sender, iv=bytes.fromhex(case["iv"]))
    expected = aad + bytes.fromhex(case["iv"] + case["ciphertext"] + case["tag"])
    assert protected[20:] == expected
    assert esp.decapsulate(protected, SAState(sa)) == packet
    with pytest.raises(BadICV):
        esp.decapsulate(flip(protected, 20 + 8), SAState(sa))  # a bit of the IV


def test_vectors_name_their_source() -> None:
    for path in VECTORS.glob("*.json"):
        assert json.loads(path.read_text())["source"], path.name

