"""The SPD's decision cache: the same answers as the ordered list, bounded under a flood, emptied by add()."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP

from client_agent.ipsec import SPD, Action, Policy, Selector
from client_agent.ipsec.spd import CACHE_SIZE

LOCAL, REMOTE = "10.0.0.1", "203.0.113.100"


def policies() -> list[Policy]:
    return [Policy(Selector(src=f"{LOCAL}/32", dst=f"{REMOTE}/32", protocol=6, dst_ports=(80, 80)), Action.DISCARD,
                   name="no-web"),
            Policy(Selector(src="10.0.0.0/24", dst="203.0.113.0/24"), Action.BYPASS, name="lan")]


def walk(spd: SPD, packet: bytes, inbound: bool) -> Policy:
    """The uncached answer: a fresh SPD with the same policies."""
    return SPD(spd.policies).lookup(packet, inbound=inbound)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([TCP, UDP]), st.sampled_from([LOCAL, "10.0.0.2", "10.0.1.1"]),
       st.integers(1, 65535), st.sampled_from([79, 80, 81]), st.booleans())
def test_cached_decisions_are_the_ordered_lists(layer, src, sport, dport, inbound):
    spd = SPD(policies())
    packet = bytes(IP(src=src, dst=REMOTE) / layer(sport=sport, dport=dport))
    first = spd.lookup(packet, inbound=inbound)
    assert first is spd.lookup(packet, inbound=inbound) and first.name == walk(spd, packet, inbound).name


def test_a_flood_of_distinct_ports_never_grows_the_cache_beyond_its_bound():
    spd = SPD(policies())
    for port in range(1, CACHE_SIZE * 2 + 2):
        assert spd.lookup(bytes(IP(src=LOCAL, dst=REMOTE) / UDP(sport=port, dport=53))).name == "lan"
    assert all(len(cache) <= CACHE_SIZE for cache in spd._cache)


def test_a_policy_added_later_is_seen_by_packets_already_cached():
    spd = SPD([], default=Action.DISCARD)
    packet = bytes(IP(src=LOCAL, dst=REMOTE) / TCP(sport=40000, dport=443))
    assert spd.lookup(packet).name == "default"
    spd.add(Policy(Selector(), Action.BYPASS, name="all"))
    assert spd.lookup(packet).name == "all"
