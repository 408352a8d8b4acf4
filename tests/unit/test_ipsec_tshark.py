"""tshark as an oracle: it decrypts our ESP with the key file we write and checks ICVs and inner checksums.

Wireshark's ESP dissector is an implementation nobody here wrote; if it accepts
our key file, finds every ICV good, every tampered twin bad, and the inner
TCP/UDP checksums right, then our packets, key file and algorithm labels are
what the rest of the world expects. AH has no key table in Wireshark; tshark
still dissects our AH and checks the checksums of what it carries.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.utils import wrpcap

from client_agent.ipsec.keyfile import FILENAME, esp_sa_file, esp_sa_line
from client_agent.ipsec.processing import encapsulate
from client_agent.ipsec.sa import Mode, Protocol, SAState, SecurityAssociation
from client_agent.ipsec.sad import SAD
from client_agent.ipsec.suites import all_suites

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark)")
TUNNEL = {"src": "198.51.100.1", "dst": "203.0.113.200"}
FIELDS = [
    "frame.number", "esp.spi", "esp.icv_good", "esp.icv_bad", "ah.spi", "tcp.checksum.status", "udp.checksum.status",
]
GOOD = "1"  # Wireshark's checksum status: 0 bad, 1 good, 2 unverified


def inner_packets() -> dict[str, bytes]:
    """TCP and UDP with valid checksums (scapy computes them)."""
    ip = IP(src="10.0.0.1", dst="203.0.113.100")
    return {
        "tcp": bytes(ip / TCP(sport=40000, dport=80, flags="PA") / b"GET / HTTP/1.0"),
        "udp": bytes(ip / UDP(sport=5000, dport=5001) / (b"u" * 301)),
    }


def tamper(wire: bytes) -> bytes:
    """Flip one bit in the middle of the ESP payload (ciphertext) or AH-protected payload."""
    middle = 20 + (len(wire) - 20) // 2
    return wire[:middle] + bytes([wire[middle] ^ 0x01]) + wire[middle + 1 :]


def run_tshark(pcap: Path, config_dir: Path) -> list[dict[str, str]]:
    command = [
        TSHARK, "-n", "-r", str(pcap),
        "-o", "esp.enable_encryption_decode:TRUE", "-o", "esp.enable_authentication_check:TRUE",
        "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
        "-T", "fields", "-E", "separator=/t", "-E", "occurrence=l",
    ]
    for field in FIELDS:
        command += ["-e", field]
    env = {**os.environ, "WIRESHARK_CONFIG_DIR": str(config_dir)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=True)
    return [dict(zip(FIELDS, line.split("\t"), strict=True)) for line in result.stdout.splitlines()]


@needs_tshark
def test_tshark_decrypts_and_verifies_every_suite(tmp_path: Path) -> None:
    sas, frames, expected = [], [], []
    for number, (suite, mode) in enumerate((s, m) for s in all_suites() for m in Mode):
        sa = suite.sa(0x5000 + number, mode, **(TUNNEL if mode is Mode.TUNNEL else {}))
        sender = SAState(sa)
        sas.append(sa)
        for kind, packet in inner_packets().items():
            wire = encapsulate(packet, sender)
            frames += [wire, tamper(wire)]
            expected += [(sa, kind, True), (sa, kind, False)]
    (tmp_path / FILENAME).write_text(esp_sa_file(sas))
    wrpcap(str(tmp_path / "ipsec.pcap"), [IP(frame) for frame in frames])

    rows = run_tshark(tmp_path / "ipsec.pcap", tmp_path)
    assert len(rows) == len(expected)
    for row, (sa, kind, genuine) in zip(rows, expected, strict=True):
        where = f"frame {row['frame.number']}: {sa.protocol.name} {sa.encryption}/{sa.integrity} {sa.mode} {kind}"
        if sa.protocol is Protocol.AH:
            assert int(row["ah.spi"], 16) == sa.spi, where
            if genuine:
                assert row[f"{kind}.checksum.status"] == GOOD, where
            continue
        assert int(row["esp.spi"], 16) == sa.spi, where
        if genuine:
            assert (row["esp.icv_good"], row["esp.icv_bad"]) == ("1", "0"), where
            assert row[f"{kind}.checksum.status"] == GOOD, where
        else:
            assert (row["esp.icv_good"], row["esp.icv_bad"]) == ("0", "1"), where


@needs_tshark
def test_tshark_flags_a_wrong_key(tmp_path: Path) -> None:
    """The control: the same packets with a key file that has the wrong key are not verified."""
    suite = next(s for s in all_suites() if s.integrity == "AUTH_HMAC_SHA1_96" and s.encryption == "ENCR_AES_CBC")
    sa = suite.sa(0x6000)
    wire = encapsulate(inner_packets()["tcp"], SAState(sa))
    wrong = dataclasses.replace(sa, auth_key=bytes(20))
    (tmp_path / FILENAME).write_text(esp_sa_file([wrong]))
    wrpcap(str(tmp_path / "x.pcap"), [IP(wire)])
    (row,) = run_tshark(tmp_path / "x.pcap", tmp_path)
    assert (row["esp.icv_good"], row["esp.icv_bad"]) == ("0", "1")


def test_esp_sa_line_format() -> None:
    """tshark 4.0's esp_sa UAT: 8 quoted fields; GCM key = key + salt with authentication "NULL","" ."""
    gcm = SecurityAssociation(
        spi=0x1234, protocol="esp", mode="tunnel", src="198.51.100.1", dst="203.0.113.200",
        encryption="ENCR_AES_GCM_16", enc_key=bytes(range(20)),
    )
    assert esp_sa_line(gcm) == (
        '"IPv4","198.51.100.1","203.0.113.200","0x00001234","AES-GCM with 16 octet ICV [RFC4106]",'
        '"0x000102030405060708090a0b0c0d0e0f10111213","NULL",""'
    )
    cbc = SecurityAssociation(
        spi=0xABCDEF01, protocol="esp", encryption="ENCR_AES_CBC", enc_key=b"\x11" * 16,
        integrity="AUTH_HMAC_SHA1_96", auth_key=b"\x22" * 20,
    )
    assert esp_sa_line(cbc) == (
        f'"IPv4","*","*","0xabcdef01","AES-CBC [RFC3602]","0x{"11" * 16}","HMAC-SHA-1-96 [RFC2404]","0x{"22" * 20}"'
    )
    null = SecurityAssociation(spi=300, protocol="esp", integrity="AUTH_HMAC_MD5_96", auth_key=b"\x33" * 16)
    assert esp_sa_line(null).split(",")[4:7] == ['"NULL"', '""', '"HMAC-MD5-96 [RFC2403]"']


def test_esp_sa_file_skips_ah_and_takes_states_or_a_whole_sad() -> None:
    ah_sa = SecurityAssociation(spi=300, protocol="ah", integrity="AUTH_HMAC_SHA1_96", auth_key=bytes(20))
    esp_sa = SecurityAssociation(spi=301, protocol="esp", encryption="ENCR_AES_GCM_16", enc_key=bytes(20))
    assert esp_sa_file([ah_sa, SAState(esp_sa)]) == esp_sa_line(esp_sa) + "\n"
    sad = SAD()
    sad.add_outbound(esp_sa)
    sad.add_inbound(ah_sa)
    assert esp_sa_file(sad) == esp_sa_line(esp_sa) + "\n"
    with pytest.raises(ValueError, match="ESP SAs only"):
        esp_sa_line(ah_sa)
