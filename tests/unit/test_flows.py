"""Core messages become OpenFlow 1.3 messages that os-ken can serialize."""

from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from nat_app.config import NatConfig
from nat_app.decide import NatCore
from nat_app.flows import to_openflow
from nat_app.messages import AddFlow, Barrier, DecTtl, DeleteFlows, Output, PacketOut, SetField


class FakeDatapath:
    ofproto = ofproto_v1_3
    ofproto_parser = ofproto_v1_3_parser
    id = 1

    def set_xid(self, msg):
        msg.set_xid(1)


def test_every_message_the_core_makes_serializes():
    dp = FakeDatapath()
    msgs = NatCore(NatConfig()).switch_connected(0) + [
        AddFlow(30000, {"in_port": 1, "eth_type": 0x800, "ip_proto": 6, "ipv4_src": "10.0.0.1", "tcp_src": 5},
                (SetField("ipv4_src", "203.0.113.1"), SetField("tcp_src", 9), SetField("eth_dst", "00:00:00:00:00:01"),
                 DecTtl(), Output(2)), cookie=7, idle_timeout=300, notify_removal=True),
        DeleteFlows(7), Barrier(), PacketOut(b"\x00" * 60, (Output(1),)),
    ]
    for m in msgs:
        of = to_openflow(dp, m)
        dp.set_xid(of)
        of.serialize()
        assert len(of.buf) >= 8


def test_flow_removal_flag_and_cookie_delete_mask():
    dp = FakeDatapath()
    add = to_openflow(dp, AddFlow(1, {}, (Output(1),), cookie=9, notify_removal=True))
    assert add.flags & ofproto_v1_3.OFPFF_SEND_FLOW_REM and add.cookie == 9
    delete = to_openflow(dp, DeleteFlows(9))
    assert delete.cookie == 9 and delete.cookie_mask == 0xFFFFFFFFFFFFFFFF
    assert to_openflow(dp, DeleteFlows(None)).cookie_mask == 0
