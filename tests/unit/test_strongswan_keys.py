"""charon's logged CHILD_SA keys (``chd = 4``) read back into Wireshark's esp_sa: tshark then decrypts with the
keys strongSwan itself used. The log below has charon 5.9.8's filelog shape (thread, group, %B hex dumps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from topo.strongswan import charon_children, charon_esp_sa, natlab_names

ENC_I, ENC_R = bytes(range(20)), bytes(range(100, 120))


def dump(label: str, key: bytes) -> list[str]:
    lines = [f"07[CHD] {label} => {len(key)} bytes @ 0x7f0a3c004e20"]
    for at in range(0, len(key), 16):
        chunk = key[at:at + 16]
        lines.append(f"07[CHD]   {at:>2}: {' '.join(f'{b:02X}' for b in chunk)}  {'.' * len(chunk)}")
    return lines


LOG = "\n".join([
    "07[CFG] selected proposal: ESP:AES_GCM_16_128/NO_EXT_SEQ",
    "07[CHD] CHILD_SA natlab{1} state change: CREATED => INSTALLING",
    *dump("encryption initiator key", ENC_I), *dump("encryption responder key", ENC_R),
    "07[IKE] CHILD_SA natlab{1} established with SPIs c1a2b3c4_i 0badcafe_o and TS 10.99.1.1/32 === 10.99.2.2/32",
])


@pytest.mark.parametrize("initiator", [True, False])
def test_keys_follow_the_exchange_initiator(initiator: bool) -> None:
    (child,) = charon_children(LOG, initiator)
    assert (child.spi_in, child.spi_out) == (0xC1A2B3C4, 0x0BADCAFE)
    out, into = (ENC_I, ENC_R) if initiator else (ENC_R, ENC_I)
    assert child.keys_out == (out, b"") and child.keys_in == (into, b"")


def test_esp_sa_lines_name_tsharks_algorithm_and_both_spis() -> None:
    text = charon_esp_sa(LOG, initiator=True)
    assert text.count("\n") == 2
    assert '"IPv4","*","*","0xc1a2b3c4","AES-GCM with 16 octet ICV [RFC4106]","0x' + ENC_R.hex() + '","NULL",""' in text


@pytest.mark.parametrize(("proposal", "names"), [
    ("AES_GCM_16_128/NO_EXT_SEQ", ("ENCR_AES_GCM_16", "NONE")),
    ("AES_CBC_128/HMAC_SHA2_256_128/NO_EXT_SEQ", ("ENCR_AES_CBC", "AUTH_HMAC_SHA2_256_128")),
    ("AES_CBC_256/HMAC_SHA1_96/NO_EXT_SEQ", ("ENCR_AES_CBC", "AUTH_HMAC_SHA1_96")),
])
def test_charon_proposals_map_to_natlab_names(proposal: str, names: tuple[str, str]) -> None:
    assert natlab_names(proposal) == names


def test_a_log_without_children_has_no_keys() -> None:
    assert charon_esp_sa("07[IKE] initiating IKE_SA natlab[1]\n", initiator=True) == ""


def test_the_vici_socket_path_fits_a_unix_socket_whatever_the_run_folder():
    """sun_path holds 108 bytes: the demo's evidence folders are longer, and charon then never listened."""
    from topo.strongswan import Charon

    deep = Path("/tmp/pytest-of-root/pytest-400/test_natlab_demo_writes_the_re0/runs/20261203T084024Z/evidence"
                "/baseline-strongswan/charon")
    paths = {Charon(deep).vici_path, Charon(deep.parent / "other").vici_path}
    assert len(paths) == 2 and all(len(str(p).encode()) < 108 for p in paths)
    assert f"unix://{Charon(deep).vici_path}" in Charon(deep).strongswan_conf()
