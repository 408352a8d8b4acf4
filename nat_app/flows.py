"""Turn the core's Messages into OpenFlow 1.3 messages for os-ken.

The only module besides ``app.py`` that imports os-ken; it holds no state.
"""

from __future__ import annotations

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from nat_app.messages import (
    AddFlow,
    Barrier,
    DecTtl,
    DeleteFlows,
    Message,
    Output,
    PacketOut,
    SetField,
    SetMeter,
    ToController,
)

_ALL_BITS = 0xFFFFFFFFFFFFFFFF


def to_openflow_all(datapath, message: Message) -> list:
    """The os-ken messages for one core Message (a SetMeter is a delete then an add)."""
    if isinstance(message, SetMeter):
        band = parser.OFPMeterBandDrop(rate=message.rate_pps, burst_size=message.burst)
        return [parser.OFPMeterMod(datapath, command=ofp.OFPMC_DELETE, meter_id=message.meter_id),
                parser.OFPMeterMod(datapath, command=ofp.OFPMC_ADD, flags=ofp.OFPMF_PKTPS | ofp.OFPMF_BURST,
                                   meter_id=message.meter_id, bands=[band])]
    return [to_openflow(datapath, message)]


def to_openflow(datapath, message: Message):
    """The os-ken message object for one core Message."""
    if isinstance(message, AddFlow):
        flags = ofp.OFPFF_SEND_FLOW_REM if message.notify_removal else 0
        instructions = ([parser.OFPInstructionMeter(message.meter, ofp.OFPIT_METER)]
                        if message.meter is not None else [])
        if message.actions:
            instructions.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, _actions(message.actions)))
        return parser.OFPFlowMod(
            datapath, cookie=message.cookie, command=ofp.OFPFC_ADD, idle_timeout=message.idle_timeout,
            hard_timeout=message.hard_timeout, priority=message.priority, buffer_id=ofp.OFP_NO_BUFFER,
            flags=flags, match=_match(message.match), instructions=instructions)
    if isinstance(message, DeleteFlows):
        cookie, mask = (0, 0) if message.cookie is None else (message.cookie, _ALL_BITS)
        return parser.OFPFlowMod(
            datapath, cookie=cookie, cookie_mask=mask, table_id=ofp.OFPTT_ALL, command=ofp.OFPFC_DELETE,
            out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=parser.OFPMatch())
    if isinstance(message, Barrier):
        return parser.OFPBarrierRequest(datapath)
    if isinstance(message, PacketOut):
        in_port = ofp.OFPP_CONTROLLER if message.in_port is None else message.in_port
        return parser.OFPPacketOut(datapath, buffer_id=ofp.OFP_NO_BUFFER, in_port=in_port,
                                   actions=_actions(message.actions), data=message.data)
    raise TypeError(f"not a core message: {message!r}")


def _match(fields: dict):
    """The match with its fields in the core's order: OVS wants a field's prerequisites before it
    (eth_type before Nicira's ip_frag: OFPBMC_BAD_PREREQ otherwise), and os-ken would put extension
    fields first."""
    return parser.OFPMatch(_ordered_fields=list(fields.items()))


def _actions(actions) -> list:
    out = []
    for action in actions:
        if isinstance(action, SetField):
            out.append(parser.OFPActionSetField(**{action.name: action.value}))
        elif isinstance(action, Output):
            out.append(parser.OFPActionOutput(action.port))
        elif isinstance(action, DecTtl):
            out.append(parser.OFPActionDecNwTtl())
        elif isinstance(action, ToController):
            out.append(parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER))
        else:
            raise TypeError(f"not a core action: {action!r}")
    return out
