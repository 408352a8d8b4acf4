"""CL-COOKIE live (seed FIG. 8 step 801): three clients behind one global IP, IKE from UDP port 500 each.

Each client leases the global IP and its IKE initiator SPI (the cookie: UDP
500, 64 bits at offset 0) and uses it as SPIi; NAT detection is computed over
the global address. natlab's plain responder on srv1 answers all three at
once. The judge (:func:`cookie_judge`) reads the clients' captures (every IKE
datagram a client receives carries its own SPIi), srv1's capture through
tshark's IKEv2 dissector with the responder's key table (three SPIi, all from
the global IP and port 500, every IKE_AUTH opened), and both sides' events.

Controls, each failing the judge for its predicted reason: (a) no cookie
lease: the NAT has nothing to demultiplex UDP 500 by; (b) NAT-D over the
private address: the responder detects the NAT (and the initiators float to 4500).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client_agent.ike.registry import NATT_PORT
from conformance.scenarios.ike import SRV1, cookie_judge, run_round


@pytest.fixture
def three_clients(make_testbed):
    return make_testbed(clients=3, servers=1, globals=2)  # two globals, as in the demo: the cookies must share one


def test_three_clients_share_a_global_ip_with_leased_cookies(three_clients, tmp_path: Path) -> None:
    seen = run_round(three_clients, tmp_path, lease=True, natd_global=True)
    assert cookie_judge(seen) == [], json.dumps({k: seen[k] for k in ("clients", "responder", "wire")})[:4000]


def test_control_without_cookie_leases_fails_for_lack_of_demultiplexing(three_clients, tmp_path: Path) -> None:
    """(a) The NAT holds no ISAKMP entry: UDP 500 gets its own NAPT, or nothing, but no cookie demultiplexing."""
    seen = run_round(three_clients, tmp_path, lease=False, natd_global=False)
    failed = cookie_judge(seen)
    print("control (a) failed checks:", failed)
    assert any("source ports" in f or "no IKE SA" in f or "detected a NAT" in f for f in failed), failed


def test_control_natd_over_the_private_address_lets_the_responder_see_the_nat(three_clients, tmp_path: Path) -> None:
    """(b) Leased cookies, but NAT-D over 10.0.0.x: a standard responder detects the NAT, and the initiators,
    seeing it too, float to UDP 4500 (RFC 7296 2.23), so srv1 also sees IKE from ports other than 500.
    Exactly those two checks fail, and srv1's capture shows the floated exchanges."""
    seen = run_round(three_clients, tmp_path, lease=True, natd_global=False)
    failed = cookie_judge(seen)
    print("control (b) failed checks:", failed)
    assert [f for f in failed if "detected a NAT" in f] and [f for f in failed if "source ports" in f], failed
    assert len(failed) == 2, failed
    floated = [r for r in seen["wire"]["srv1-eth0"] if r["ip.dst"] == SRV1 and r["udp.dstport"] == str(NATT_PORT)]
    assert floated, seen["wire"]["srv1-eth0"][:6]

