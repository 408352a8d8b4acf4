"""Fixed bug, found by the nmap test (issue 9, 5d): a stranger's dropped UDP made r1 lose the first answer
to a client's next new NAPT mapping.

r1 drops unsolicited inbound traffic with one wide flow (``priority=10,in_port=2 actions=drop``). OVS's
userspace datapath caches that decision as a megaflow masked on little more than the IP protocol
(``in_port(2),ipv4(proto=17) actions:drop``, seen with ``ovs-appctl dpctl/dump-flows``), which lives
about 10 s after its last packet. When h1 then opens a mapping, the controller adds the translate
flows and sends h1's first datagram out, and srv1's answer (0.3 ms later) still meets the cached drop:
revalidation has not yet caught up with the new flows. Later answers pass. Twelve seconds after the
stranger's datagram (the megaflow expired) the first answer passes too.

The fix (issue 14): outside misses no longer meet a wide drop flow. They go to the controller through
an OpenFlow meter (``decide.NatCore.base_flows``), so the cached megaflow's action is "to the
controller", and an answer that still meets it is translated there ("raced its flow"); what has no
mapping is dropped and counted there (RFC 4787 REQ-8), and the meter bounds the packet-in rate.
"""

from __future__ import annotations

from conformance import apps
from netwire.plan import global_ips, server_ip
from tests.testbed.services import probe_service

SRV1 = server_ip(1)
STRANGER_PORT, ECHO_PORT, CLIENT_PORT = 9999, 7, 40000


def test_the_first_answer_to_a_new_mapping_arrives_after_a_stranger_was_dropped(make_testbed):
    tb = make_testbed(clients=1, servers=2, globals=1)
    stranger = apps.probe(tb.host("srv2"), "udp", global_ips(1)[0], STRANGER_PORT, "--count", 1, "--wait", 0.1)
    assert stranger["replies"] == 0  # dropped by r1, as it must be
    with probe_service(tb.host("srv1"), "udp", ECHO_PORT, "udp-echo", SRV1, ECHO_PORT):
        answer = apps.probe(tb.host("h1"), "udp", SRV1, ECHO_PORT, "--sport", CLIENT_PORT, "--count", 1,
                            "--wait", 1)
    assert answer["replies"] == 1, answer

