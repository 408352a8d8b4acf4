"""The IKE agent's leases against the real NAT core (FIG. 8 steps 801-802): SPIi, CHILD SPIs, retire and replace.

The NAT's own translation table is the oracle: the ISAKMP entry carries the
SPIi as its 64-bit GPN on UDP 500; a CHILD SPI whose SA is gone leaves the
table, and its replacement enters it.
"""

from __future__ import annotations

from pathlib import Path

from client_agent.agent_config import load
from client_agent.agent_leases import LeasePlan, child_spi_label, child_spi_lease, ike_leases, wanted_leases
from client_agent.lease_client import LeaseClient
from nat_app.gpn import Definition
from netwire.pcp import ISAKMP_DEFINITION
from tests.unit.test_agent_leases import GW, Link, nat_switch

ISAKMP_KEY = Definition.from_wire(ISAKMP_DEFINITION).key  # the NAT table's protocol value for UDP-500 GPNs

EXAMPLE = Path(__file__).resolve().parents[2] / "client_agent" / "examples" / "ike-esp-transport-nat-h1.toml"
SPI_I = 0x0123456789ABCDEF
CHILDREN = [(50, 0x7001), (50, 0x7002)]


def ike_link(sw):
    config = load(EXAMPLE)
    link = Link(sw, config)
    wanted = ike_leases(config, SPI_I, CHILDREN) + wanted_leases(config)
    link.plan = LeasePlan(LeaseClient(config.address, GW), wanted, config.nat.lifetime)
    return config, link


def test_the_ike_spi_and_child_spis_stand_in_the_nats_table():
    sw = nat_switch()
    config, link = ike_link(sw)
    link.start(0.0, rounds=40)
    assert link.plan.ready, link.plan.problems
    entries = link.entries()
    assert (ISAKMP_KEY, "203.0.113.1", SPI_I, "203.0.113.100") in entries
    assert {(50, "203.0.113.1", spi, "203.0.113.100") for _, spi in CHILDREN} <= entries
    assert link.plan.held_gpns(50) == {0x7001, 0x7002}


def test_a_retired_child_spi_leaves_the_table_and_its_replacement_enters():
    sw = nat_switch()
    config, link = ike_link(sw)
    link.start(0.0, rounds=40)
    link.plan.retire(child_spi_label(50, 0x7001), 1.0)
    link.plan.add(child_spi_lease(config, 50, 0x7003), 1.0)
    link.exchange(1.0, rounds=20)
    spis = {gpn for proto, _, gpn, _ in link.entries() if proto == 50}
    assert spis == {0x7002, 0x7003}
    assert link.plan.ready and link.plan.held_gpns(50) == {0x7002, 0x7003}
