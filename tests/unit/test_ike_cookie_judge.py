"""CL-COOKIE's judge can fail: each way the behaviour could be absent makes it name its reason."""

from __future__ import annotations

import copy

import pytest

from conformance.scenarios.ike import SRV1, cookie_judge

CLIENTS = {"h1": "10.0.0.1", "h2": "10.0.0.2", "h3": "10.0.0.3"}
GLOBAL = "203.0.113.1"
SPI = {"h1": 0x1111, "h2": 0x2222, "h3": 0x3333}


def good() -> dict:
    """What a passing round looks like."""
    wire = {"srv1-eth0": [], **{f"{n}-eth0": [] for n in CLIENTS}}
    for name, ip in CLIENTS.items():
        spi = f"{SPI[name]:016x}"
        wire["srv1-eth0"].append({"ip.src": GLOBAL, "ip.dst": SRV1, "udp.srcport": "500", "isakmp.ispi": spi})
        for _ in range(2):
            wire[f"{name}-eth0"].append({"ip.src": SRV1, "ip.dst": ip, "udp.srcport": "500", "isakmp.ispi": spi})
    return {
        "cookies": {n: {"global_gpn": SPI[n], "global_ip": GLOBAL} for n in CLIENTS},
        "clients": {n: [{"event": "IkeEstablished", "spi_i": f"{SPI[n]:016x}"}] for n in CLIENTS},
        "responder": [{"event": "IkeEstablished", "nat_peer": False}] * 3,
        "wire": wire, "client_ips": CLIENTS,
        "decrypted": " ".join(f"ID_FQDN: {n}.natlab" for n in CLIENTS),
        "released": {n: f"released {SPI[n]:08x}  CLIENT-ALG isakmp" for n in CLIENTS},
    }


def test_a_good_round_passes():
    assert cookie_judge(good()) == []


def _napt_ports(seen):  # control (a): no lease, the NAT's own NAPT rewrites port 500
    for row in seen["wire"]["srv1-eth0"]:
        row["udp.srcport"] = "1024"


def _cross_delivered(seen):  # a reply with h2's SPIi delivered to h1
    seen["wire"]["h1-eth0"].append({"ip.src": SRV1, "ip.dst": "10.0.0.1", "udp.srcport": "500",
                                    "isakmp.ispi": f"{SPI['h2']:016x}"})


def _nat_detected(seen):  # control (b): NAT-D over the private address
    seen["responder"] = [{"event": "IkeEstablished", "nat_peer": True}] * 3


def _not_the_cookie(seen):  # an SPIi other than the leased one
    seen["clients"]["h3"] = [{"event": "IkeEstablished", "spi_i": "00000000000000ff"}]


def _private_leak(seen):
    seen["wire"]["srv1-eth0"][0]["ip.src"] = "10.0.0.1"


def _undecryptable(seen):
    seen["decrypted"] = ""


def _several_globals(seen):  # the clients did not share one global IP: no demultiplexing was needed
    seen["cookies"]["h2"]["global_ip"] = "203.0.113.2"


def _kept(seen):  # a cookie lease the NAT did not release (the CLI got no answer)
    seen["released"]["h2"] = "no answer from the NAT within 3 s"


@pytest.mark.parametrize(("variant", "reason"), [
    (_napt_ports, "source ports"), (_cross_delivered, "SPIi of others"), (_nat_detected, "detected a NAT"),
    (_not_the_cookie, "not the leased cookie"), (_private_leak, "private source"), (_undecryptable, "tshark"),
    (_several_globals, "several global IPs"), (_kept, "not released"),
])
def test_each_variant_fails_for_its_reason(variant, reason):
    seen = copy.deepcopy(good())
    variant(seen)
    failed = cookie_judge(seen)
    assert failed and any(reason in f for f in failed), failed
