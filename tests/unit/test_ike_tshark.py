"""tshark as an oracle for IKEv2: it decrypts our exchanges with the ikev2_decryption_table we write.

Wireshark's IKEv2 dissector is an implementation nobody here wrote. For every
IKE suite, it must decrypt both IKE_AUTH messages (finding the identities and
selectors inside) and call every integrity checksum correct; a tampered twin
of each protected message must be called incorrect, and a wrong key must
decrypt nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.utils import wrpcap

from client_agent.ike.events import IkeEstablished
from client_agent.ike.keyfile import FILENAME, ikev2_line
from client_agent.ike.registry import IKE_PORT
from tests.unit.ike_pair import H1, SRV, Pair, configs
from tests.unit.test_ike_session import IKE_SUITES

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark)")


def recorded_exchange(ike: str) -> tuple[Pair, IkeEstablished]:
    pair = Pair(*configs(ike=(ike,)))
    session = pair.start()
    pair.pump()
    session.check_liveness(1.0)
    pair.pump()
    return pair, pair.established("a")[0]


def frames(pair: Pair, tampered: bool) -> list[IP]:
    out = []
    for side, data in pair.wire:
        src, dst = (H1, SRV) if side == "a" else (SRV, H1)
        out.append(IP(src=src[0], dst=dst[0]) / UDP(sport=IKE_PORT, dport=IKE_PORT) / data)
        if tampered and data[16] == 46:  # an SK message: flip a bit of its last byte (ICV)
            out.append(IP(src=src[0], dst=dst[0]) / UDP(sport=IKE_PORT, dport=IKE_PORT) / (data[:-1] + bytes([data[-1] ^ 1])))
    return out


def tshark_verbose(pcap: Path, config_dir: Path) -> str:
    env = {**os.environ, "WIRESHARK_CONFIG_DIR": str(config_dir)}
    result = subprocess.run([TSHARK, "-n", "-r", str(pcap), "-V"], env=env, capture_output=True, text=True,
                            timeout=60, check=True)
    assert "Error loading table" not in result.stderr, result.stderr
    return result.stdout


@needs_tshark
@pytest.mark.parametrize("ike", IKE_SUITES[::3] + IKE_SUITES[-2:])
def test_tshark_decrypts_and_verifies_our_ike_exchange(tmp_path, ike):
    pair, established = recorded_exchange(ike)
    (tmp_path / FILENAME).write_text(ikev2_line(established.spi_i, established.spi_r, established.suite,
                                                established.keys) + "\n")
    wrpcap(str(tmp_path / "ike.pcap"), frames(pair, tampered=True))
    text = tshark_verbose(tmp_path / "ike.pcap", tmp_path)
    assert "ID_FQDN: h1.natlab" in text and "ID_FQDN: srv1.natlab" in text
    assert "Starting Addr: 203.0.113.100" in text
    checks = re.findall(r"Integrity Checksum Data: .*\[(correct|incorrect)", text)
    assert checks == ["correct", "incorrect"] * 4  # IKE_AUTH and INFORMATIONAL, both ways, each with a twin


@needs_tshark
def test_tshark_with_a_wrong_key_decrypts_nothing(tmp_path):
    pair, established = recorded_exchange("aes128-sha256-modp2048")
    wrong = {"sk_ai": bytes(32), "sk_ar": bytes(32), "sk_ei": bytes(16), "sk_er": bytes(16)}
    keys = type(established.keys)(**{**established.keys.__dict__, **wrong})
    (tmp_path / FILENAME).write_text(ikev2_line(established.spi_i, established.spi_r, established.suite, keys) + "\n")
    wrpcap(str(tmp_path / "ike.pcap"), frames(pair, tampered=False))
    text = tshark_verbose(tmp_path / "ike.pcap", tmp_path)
    checks = re.findall(r"Integrity Checksum Data: .*\[(correct|incorrect)", text)
    assert checks == ["incorrect"] * 4 and "ID_FQDN: h1.natlab" not in text
