"""Outside misses reach the controller through a meter (the fix of tests/testbed/test_first_answer_live.py):
OVS may hand the controller an answer its cached miss megaflow caught before the new translate flow took
over; the controller must translate it. Everything else from outside stays dropped and counted."""

from __future__ import annotations

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from nat_app.decide import METER_OUTSIDE_MISS
from nat_app.messages import PRIO_OUTSIDE_DROP, ToController
from tests.unit import test_nat_core
from tests.unit.test_nat_core import G1, IN, OUT, SRV1, SRV2, from_client, from_server


def test_the_outside_miss_is_a_metered_punt_not_a_drop():
    sw = test_nat_core.switch.__wrapped__()
    (miss,) = [f.msg for f in sw.flows if f.msg.priority == PRIO_OUTSIDE_DROP]
    assert miss.actions == (ToController(),) and miss.meter == METER_OUTSIDE_MISS
    assert sw.meters[METER_OUTSIDE_MISS].rate_pps > 0


def test_an_answer_caught_by_a_cached_miss_is_translated_by_the_controller():
    sw = test_nat_core.switch.__wrapped__()
    sw.receive(IN, from_client("10.0.0.1", UDP(sport=40000, dport=7)))
    (out,) = sw.take(OUT)
    answer = from_server(SRV1, Ether(out)[IP].src, UDP(sport=7, dport=40000))
    sw.apply(sw.core.packet_in(OUT, answer, 0.0))  # what OVS's stale megaflow does: straight to the controller
    (back,) = sw.take(IN)
    assert (Ether(back)[IP].dst, Ether(back)[UDP].dport) == ("10.0.0.1", 40000)


def test_unsolicited_packets_still_die_at_the_controller_and_are_counted():
    sw = test_nat_core.switch.__wrapped__()
    sw.receive(OUT, from_server(SRV2, G1, UDP(sport=9, dport=40000)))
    assert sw.take(IN) == [] and sw.core.counters["drop:no-entry"] == 1


def test_every_punt_from_outside_passes_the_meter():
    """Fragments, TCP SYN/FIN/RST and ICMP errors from outside reach the controller rate-limited, like misses:
    a flood of them cannot buy unbounded controller time."""
    core = test_nat_core.switch.__wrapped__().core
    outside = [m for m in core.base_flows() if getattr(m, "match", {}).get("in_port") == core.config.outside_port]
    assert len(outside) == 8 and all(m.meter == METER_OUTSIDE_MISS for m in outside)
