"""nat_app.ofwire packs the core's FlowMods and PacketOuts byte for byte as os-ken does (os-ken is the oracle)."""

from __future__ import annotations

import pytest
from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from nat_app import ofwire
from nat_app.config import NatConfig
from nat_app.decide import NatCore
from nat_app.flows import to_openflow
from nat_app.messages import COOKIE_INFRA, AddFlow, Barrier, DecTtl, Output, PacketOut, SetField, ToController
from nat_app.savi import SaviCore
from netwire.plan import GATEWAY_IP
from topo.natlab import client_ip, server_ip


class Datapath:
    ofproto, ofproto_parser = ofproto_v1_3, ofproto_v1_3_parser


def oskens(message, xid: int) -> bytes:
    msg = to_openflow(Datapath(), message)
    msg.xid = xid
    msg.serialize()
    return bytes(msg.buf)


def core_messages() -> list:
    """What NatCore and SaviCore emit for connects, TCP/UDP/ICMP first packets, ARP and s1's bindings."""
    config = NatConfig()
    core = NatCore(config)
    out = list(core.switch_connected(0.0))
    core.neighbours.learn(server_ip(1), "00:00:00:00:01:00")
    mac = "00:00:00:00:00:01"
    for l4 in (TCP(sport=40000, dport=80, flags="S"), UDP(sport=5000, dport=53), ICMP(type=8, id=7)):
        frame = bytes(Ether(src=mac, dst="02:4e:41:54:00:01") / IP(src=client_ip(1), dst=server_ip(1)) / l4)
        out += core.packet_in(config.inside_port, frame, 1.0)
    arp = bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, psrc=client_ip(1), hwsrc=mac, pdst=GATEWAY_IP))
    out += core.packet_in(config.inside_port, arp, 1.0)
    savi = SaviCore(config)
    out += savi.switch_connected(0.0) if hasattr(savi, "switch_connected") else []
    out += savi.packet_in(3, arp, 1.0)
    return out


MESSAGES = core_messages()


@pytest.mark.parametrize("message", [m for m in MESSAGES if isinstance(m, AddFlow | PacketOut)],
                         ids=lambda m: type(m).__name__)
def test_every_flow_mod_and_packet_out_the_cores_emit_is_os_kens_bytes(message):
    ours = ofwire.encode(message, 0x1234)
    if ours is None:  # masked or extension fields (the base flows' ip_frag, tcp_flags punts): os-ken builds them
        assert isinstance(message, AddFlow) and message.cookie == COOKIE_INFRA
        assert any(isinstance(v, tuple) or k not in ofwire.OXM for k, v in message.match.items())
        return
    assert ours == oskens(message, 0x1234)


def test_the_cores_emit_both_kinds_with_set_fields():
    kinds = {type(m) for m in MESSAGES}
    assert AddFlow in kinds and PacketOut in kinds
    assert any(isinstance(a, SetField) for m in MESSAGES if isinstance(m, AddFlow) for a in m.actions)


@pytest.mark.parametrize("action", [Output(2), ToController(), DecTtl(), SetField("eth_src", "02:00:00:00:00:09"),
                                    SetField("ipv4_dst", "203.0.113.7"), SetField("udp_src", 4500),
                                    SetField("tcp_dst", 443)])
def test_each_action_kind_matches_os_ken(action):
    flow = AddFlow(100, {"in_port": 1, "eth_type": 0x0800, "ip_proto": 17, "ipv4_src": "10.0.0.1",
                         "udp_dst": 500, "eth_dst": "02:00:00:00:00:01"}, (action,), cookie=7, idle_timeout=300,
                   notify_removal=True)
    assert ofwire.encode(flow, 9) == oskens(flow, 9)
    packet_out = PacketOut(b"\x01\x02\x03", (action,), in_port=None)
    assert ofwire.encode(packet_out, 9) == oskens(packet_out, 9)


def test_what_it_does_not_know_is_left_to_os_ken():
    assert ofwire.encode(Barrier(), 1) is None
    assert ofwire.encode(AddFlow(1, {"ipv4_src": ("10.0.0.0", "255.255.255.0")}, ()), 1) is None  # masked
    assert ofwire.encode(AddFlow(1, {"metadata": 5}, ()), 1) is None
