"""The NAT's table keys by GPN space (FIG. 7): an IP protocol's, or a UDP port's; never a bare overloaded int."""

from __future__ import annotations

import json

import pytest

from nat_app.gpn import NAT_DEFINITIONS, GpnSpace
from netwire import pcp
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP, IPPROTO_UDP


def test_a_udp_ports_space_never_collides_with_an_ip_protocols():
    isakmp = GpnSpace.udp(500)
    assert (isakmp.protocol, isakmp.port, isakmp.over_udp) == (IPPROTO_UDP, 500, True)
    assert isakmp != GpnSpace.ip(IPPROTO_UDP) and isakmp not in {GpnSpace.ip(p) for p in range(256)}
    esp = GpnSpace.ip(IPPROTO_ESP)
    assert (esp.protocol, esp.port, esp.over_udp) == (IPPROTO_ESP, 0, False)


def test_the_nats_own_definitions_are_keyed_by_their_space():
    assert set(NAT_DEFINITIONS) == {GpnSpace.ip(IPPROTO_ESP), GpnSpace.ip(IPPROTO_AH), GpnSpace.udp(500)}
    assert all(isinstance(k, GpnSpace) and d.key == k for k, d in NAT_DEFINITIONS.items())
    assert NAT_DEFINITIONS[GpnSpace.udp(500)].ip_protocol == IPPROTO_UDP == pcp.ISAKMP_DEFINITION.protocol


def test_saved_state_and_natlab_table_see_the_same_value_as_before():
    """The space is the int the table always held: JSON, str() and lookups by a restored int agree."""
    space = GpnSpace.udp(500)
    assert json.dumps(space) == str(space) == f"{space}" == str(int(space))
    assert {space: "x"}[GpnSpace(int(space))] == "x" and GpnSpace(int(space)).port == 500


@pytest.mark.parametrize("bad", [lambda: GpnSpace.ip(256), lambda: GpnSpace.ip(-1), lambda: GpnSpace.udp(0),
                                 lambda: GpnSpace.udp(65536)])
def test_a_space_outside_its_field_is_refused(bad):
    with pytest.raises(ValueError):
        bad()
