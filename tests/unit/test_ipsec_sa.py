"""SA parameters are validated when built: every error names the field and its value."""

from __future__ import annotations

import dataclasses

import pytest

from client_agent.ipsec.algorithms import ENCRYPTION, INTEGRITY, encryption, integrity
from client_agent.ipsec.errors import SequenceExhausted
from client_agent.ipsec.sa import MAX_SEQ, Mode, Protocol, SAState, SecurityAssociation
from client_agent.ipsec.suites import all_suites, suite

GCM = {"protocol": "esp", "encryption": "ENCR_AES_GCM_16", "enc_key": bytes(20)}


def make(**changes: object) -> SecurityAssociation:
    return SecurityAssociation(**{"spi": 0x1000, **GCM, **changes})


def test_a_valid_sa_is_frozen_and_normalised() -> None:
    sa = make(protocol="ESP", mode="Tunnel", encryption="aes-gcm", src="192.0.2.1", dst="192.0.2.2")
    assert (sa.protocol, sa.mode, sa.encryption, sa.integrity) == (Protocol.ESP, Mode.TUNNEL, "ENCR_AES_GCM_16", "NONE")
    with pytest.raises(dataclasses.FrozenInstanceError):
        sa.spi = 0x2000  # type: ignore[misc]


@pytest.mark.parametrize("spi", [0, 1, 255, 2**32, -1, "256"])
def test_reserved_or_out_of_range_spi_is_refused(spi: object) -> None:
    """RFC 4303 section 2.1: SPIs 1-255 are reserved, 0 is local only; SPIs are 32 bits."""
    with pytest.raises(ValueError, match=rf"spi={spi!r}"):
        make(spi=spi)


@pytest.mark.parametrize("spi", [256, 2**32 - 1])
def test_spi_bounds_are_accepted(spi: int) -> None:
    assert make(spi=spi).spi == spi


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"protocol": "gre"}, r"protocol='gre': must be one of esp, ah"),
        ({"protocol": 47}, r"protocol=47"),
        ({"mode": "beet"}, r"mode='beet': must be one of transport, tunnel"),
        ({"encryption": "ENCR_3DES"}, r"encryption='ENCR_3DES': unknown encryption algorithm"),
        ({"integrity": "AUTH_HMAC_SHA2_512_256"}, r"integrity='AUTH_HMAC_SHA2_512_256': unknown integrity"),
        ({"enc_key": bytes(16)}, r"enc_key: 16 bytes, but ENCR_AES_GCM_16 needs 20 or 28 or 36"),
        ({"enc_key": "00" * 20}, r"enc_key: must be bytes, not str"),
        ({"encryption": "ENCR_AES_CBC", "enc_key": bytes(20), "integrity": "AUTH_HMAC_SHA1_96", "auth_key": bytes(20)},
         r"enc_key: 20 bytes, but ENCR_AES_CBC needs 16 or 24 or 32"),
        ({"encryption": "ENCR_NULL", "enc_key": b"", "integrity": "AUTH_HMAC_SHA1_96", "auth_key": bytes(16)},
         r"auth_key: 16 bytes, but AUTH_HMAC_SHA1_96 needs 20"),
        ({"integrity": "AUTH_HMAC_SHA1_96", "auth_key": bytes(20)},
         r"integrity='AUTH_HMAC_SHA1_96': ENCR_AES_GCM_16 provides"),
        ({"encryption": "ENCR_AES_CBC", "enc_key": bytes(16)}, r"integrity='NONE': ENCR_AES_CBC needs an integrity"),
        ({"encryption": "ENCR_NULL", "enc_key": b""}, r"integrity='NONE': ENCR_NULL needs an integrity"),
        ({"protocol": "ah"}, r"encryption='ENCR_AES_GCM_16': AH does not encrypt"),
        ({"protocol": "ah", "encryption": "ENCR_NULL", "enc_key": b""}, r"integrity='NONE': AH needs an integrity"),
        ({"mode": "tunnel", "src": "192.0.2.1"}, r"src='192.0.2.1', dst=None: tunnel mode needs both"),
        ({"mode": "tunnel"}, r"src=None, dst=None: tunnel mode needs both"),
        ({"dst": "2001:db8::1"}, r"dst='2001:db8::1': not an IPv4 address"),
        ({"src": "10.0.0.300"}, r"src='10.0.0.300': not an IPv4 address"),
        ({"replay_window": 32}, r"replay_window=32: must be at least 64"),
    ],
)
def test_invalid_parameters_name_field_and_value(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**changes)


def test_keys_stay_out_of_errors_and_reprs() -> None:
    with pytest.raises(ValueError) as err:
        make(enc_key=b"\xab" * 19)
    assert "abab" not in str(err.value) and "\\xab" not in str(err.value)
    sa = make(enc_key=b"\xcd" * 20)
    assert "\\xcd" not in repr(sa) and "\\xcd" not in repr(SAState(sa))


def test_algorithm_lookup_accepts_iana_names_any_case_and_aliases() -> None:
    assert encryption("encr_aes_cbc") is ENCRYPTION["ENCR_AES_CBC"]
    assert encryption("AES-GCM-16") is ENCRYPTION["ENCR_AES_GCM_16"]
    assert integrity("hmac-sha1-96") is INTEGRITY["AUTH_HMAC_SHA1_96"]
    assert integrity("SHA2-256-128") is INTEGRITY["AUTH_HMAC_SHA2_256_128"]  # scapy's spelling
    with pytest.raises(ValueError, match="known: ENCR_NULL, ENCR_AES_CBC, ENCR_AES_GCM_16"):
        encryption("rot13")


def test_algorithm_table_matches_iana_transform_ids() -> None:
    """IANA IKEv2 registry, Transform Types 1 and 3."""
    assert {a.name: a.transform_id for a in ENCRYPTION.values()} == {
        "ENCR_NULL": 11, "ENCR_AES_CBC": 12, "ENCR_AES_GCM_16": 20,
    }
    assert {a.name: a.transform_id for a in INTEGRITY.values()} == {
        "NONE": 0, "AUTH_HMAC_MD5_96": 1, "AUTH_HMAC_SHA1_96": 2, "AUTH_HMAC_SHA2_256_128": 12,
    }


def test_suites_cover_every_accepted_combination() -> None:
    names = [s.name for s in all_suites()]
    assert len(names) == len(set(names)) == 18  # 3 NULL + 9 CBC (3 key sizes x 3 MACs) + 3 GCM + 3 AH
    assert "esp:AES_GCM_16-256:NONE" in names and "ah:HMAC_MD5_96" in names
    assert suite("esp:AES_CBC-192:HMAC_SHA2_256_128").keymat_length == 24
    with pytest.raises(ValueError, match="unknown suite"):
        suite("esp:DES:NONE")


def test_sequence_numbers_start_at_one_and_never_cycle() -> None:
    """RFC 4303 section 3.3.3: the first packet carries 1; after 2**32-1 the SA must be replaced."""
    state = SAState(make())
    assert state.next_seq() == 1
    state.seq = MAX_SEQ - 1
    assert state.next_seq() == MAX_SEQ
    with pytest.raises(SequenceExhausted) as err:
        state.next_seq()
    assert err.value.reason == "seq_exhausted"
    assert state.seq == MAX_SEQ
