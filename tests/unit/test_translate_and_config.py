"""Slow-path rewriting against scapy's checksums; configuration errors."""

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from nat_app.config import ConfigError, NatConfig
from nat_app.translate import rewrite


def _valid(raw: bytes) -> bool:
    pkt = IP(raw)
    rebuilt = pkt.copy()
    del rebuilt[IP].chksum
    for layer in (TCP, UDP, ICMP):
        if layer in rebuilt and not (layer is UDP and pkt[UDP].chksum == 0):
            del rebuilt[layer].chksum
    return bytes(IP(bytes(rebuilt))) == raw


@pytest.mark.parametrize("l4", [TCP(sport=1000, dport=80, flags="S") / b"abc", UDP(sport=1000, dport=53) / b"q",
                                UDP(sport=1000, dport=53) / b"odd-length!"])
def test_rewrite_keeps_checksums_valid(l4):
    raw = bytes(IP(src="10.0.0.1", dst="203.0.113.100") / l4)
    out = rewrite(raw, src="203.0.113.1", src_port=61000)
    pkt = IP(out)
    assert (pkt.src, pkt.sport, pkt.ttl) == ("203.0.113.1", 61000, 63)
    assert _valid(out)


def test_udp_without_checksum_stays_without():
    raw = bytearray(bytes(IP(src="10.0.0.1", dst="203.0.113.100") / UDP(sport=1, dport=2) / b"x"))
    raw[26:28] = b"\x00\x00"
    out = rewrite(bytes(raw), src="203.0.113.1", src_port=3)
    assert IP(out)[UDP].chksum == 0


def test_icmp_identifier_rewrite():
    raw = bytes(IP(src="203.0.113.100", dst="203.0.113.1") / ICMP(type=0, id=9, seq=3) / b"data")
    out = rewrite(raw, dst="10.0.0.1", dst_port=5)
    assert IP(out)[ICMP].id == 5 and _valid(out)


@pytest.mark.parametrize("field,value", [
    ("inside_net", "10.0.0.0/33"), ("gateway_ip", "192.168.1.1"), ("globals", ("10.0.0.9",)),
    ("globals", ()), ("outside_port", 1), ("udp_timeout", 0), ("inside_port", "one"),
])
def test_bad_config_names_the_field_and_value(field, value):
    with pytest.raises(ConfigError) as err:
        NatConfig(**{field: value})
    assert field in str(err.value)
