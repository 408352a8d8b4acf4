"""Core messages become OpenFlow 1.3 messages that os-ken can serialize."""

from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from nat_app.config import NatConfig
from nat_app.decide import NatCore
from nat_app.flows import to_openflow, to_openflow_all
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
    for of in (of for m in msgs for of in to_openflow_all(dp, m)):
        dp.set_xid(of)
        of.serialize()
        assert len(of.buf) >= 8


def test_outside_misses_pass_a_packet_rate_meter_defined_before_them():
    """The outside-miss punt (issue 9's cached-drop bug) is metered: a delete then an add of the meter,
    then the flow whose first instruction is that meter."""
    dp = FakeDatapath()
    ofs = [of for m in NatCore(NatConfig()).base_flows() for of in to_openflow_all(dp, m)]
    mods = [of for of in ofs if isinstance(of, ofproto_v1_3_parser.OFPMeterMod)]
    assert [m.command for m in mods] == [ofproto_v1_3.OFPMC_DELETE, ofproto_v1_3.OFPMC_ADD]
    assert mods[1].flags & ofproto_v1_3.OFPMF_PKTPS and mods[1].bands[0].rate > 0
    (miss,) = [of for of in ofs if isinstance(of, ofproto_v1_3_parser.OFPFlowMod) and of.priority == 10]
    meter, apply = miss.instructions
    assert meter.meter_id == mods[1].meter_id and apply.actions[0].port == ofproto_v1_3.OFPP_CONTROLLER
    assert ofs.index(mods[1]) < ofs.index(miss)


def test_flow_removal_flag_and_cookie_delete_mask():
    dp = FakeDatapath()
    add = to_openflow(dp, AddFlow(1, {}, (Output(1),), cookie=9, notify_removal=True))
    assert add.flags & ofproto_v1_3.OFPFF_SEND_FLOW_REM and add.cookie == 9
    delete = to_openflow(dp, DeleteFlows(9))
    assert delete.cookie == 9 and delete.cookie_mask == 0xFFFFFFFFFFFFFFFF
    assert to_openflow(dp, DeleteFlows(None)).cookie_mask == 0


def test_match_fields_keep_their_prerequisites_first():
    """OVS refused Nicira's ip_frag serialized before eth_type (OFPBMC_BAD_PREREQ, seen live)."""
    dp = FakeDatapath()
    frag = [m for m in NatCore(NatConfig()).base_flows() if isinstance(m, AddFlow) and "ip_frag" in m.match][0]
    of = to_openflow(dp, frag)
    dp.set_xid(of)
    of.serialize()
    assert [name for name, _ in of.match._fields2] == list(frag.match)
