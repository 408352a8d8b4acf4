"""OpenFlow 1.3 bytes for the core's commonest messages, without os-ken's object model.

Every new NAPT connection costs the controller two FlowMods and a
PacketOut. Built by os-ken (``OFPMatch(**fields)``, ``serialize()``) they
cost more than the decision itself: each OXM field goes through netaddr's
text-to-binary conversion and several generic layers (``natlab bench
nat-core`` measures it). This module packs the same bytes with ``struct``
(OpenFlow 1.3.5: section 7.1 header, 7.2.3 OXM, 7.2.5 actions, 7.3.4.1
flow_mod, 7.3.7 packet_out), for the messages and fields the core emits;
anything else returns None and goes through os-ken as before. The unit tests
hold every encoding equal, byte for byte, to os-ken's own.
"""

from __future__ import annotations

import functools
import struct

from nat_app.messages import AddFlow, DecTtl, Message, Output, PacketOut, SetField, ToController
from netwire.checksum import ip_bytes

__pure__ = True

OFP_VERSION = 0x04
OFPT_PACKET_OUT, OFPT_FLOW_MOD = 13, 14
OFPFC_ADD = 0
OFPFF_SEND_FLOW_REM = 1
OFP_NO_BUFFER = 0xFFFFFFFF
OFPP_CONTROLLER = 0xFFFFFFFD
OFPCML_MAX, OFPCML_NO_BUFFER = 0xFFE5, 0xFFFF
OFPIT_APPLY_ACTIONS, OFPIT_METER = 4, 6
OFPAT_OUTPUT, OFPAT_DEC_NW_TTL, OFPAT_SET_FIELD = 0, 24, 25
OFPMT_OXM = 1
OFPXMC_OPENFLOW_BASIC = 0x8000

_HEADER = struct.Struct("!BBHI")
_FLOW_MOD = struct.Struct("!QQBBHHHIIIH2x")  # after the header, before the match
_PACKET_OUT = struct.Struct("!IIH6x")
_OUTPUT = struct.Struct("!HHIH6x")


def _mac(value: str) -> bytes:
    raw = bytes.fromhex(value.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(value)
    return raw


def _uint(size: int):
    return lambda value: int(value).to_bytes(size, "big")


# OXM field name -> (field number, value encoder); OpenFlow 1.3.5 table 12
OXM = {
    "in_port": (0, _uint(4)), "eth_dst": (3, _mac), "eth_src": (4, _mac), "eth_type": (5, _uint(2)),
    "ip_proto": (10, _uint(1)), "ipv4_src": (11, ip_bytes), "ipv4_dst": (12, ip_bytes),
    "tcp_src": (13, _uint(2)), "tcp_dst": (14, _uint(2)), "udp_src": (15, _uint(2)), "udp_dst": (16, _uint(2)),
    "icmpv4_type": (19, _uint(1)), "icmpv4_code": (20, _uint(1)), "arp_op": (21, _uint(2)),
    "arp_spa": (22, ip_bytes), "arp_tpa": (23, ip_bytes), "arp_sha": (24, _mac), "arp_tha": (25, _mac),
}


class Unsupported(Exception):
    """A field or action this encoder does not know: the caller uses os-ken."""


def encode(message: Message, xid: int) -> bytes | None:
    """The OpenFlow bytes of an AddFlow or PacketOut, or None for what os-ken must build."""
    try:
        if isinstance(message, AddFlow):
            return _flow_mod(message, xid)
        if isinstance(message, PacketOut):
            return _packet_out(message, xid)
    except (Unsupported, ValueError, TypeError, OverflowError):
        return None
    return None


@functools.lru_cache(maxsize=8192)
def _oxm(name: str, value: object) -> tuple[int, bytes]:
    """One OXM TLV, remembered: a connection's addresses, MACs and ports recur in its two FlowMods and in
    the next connection's (``natlab bench nat-core``: the text-to-bytes conversions were most of this step)."""
    if name not in OXM or isinstance(value, tuple):  # masked values: os-ken's job
        raise Unsupported(name)
    field, pack = OXM[name]
    raw = pack(value)
    return field, struct.pack("!HBB", OFPXMC_OPENFLOW_BASIC, field << 1, len(raw)) + raw




def _match(fields: dict) -> bytes:
    """ofp_match: OXM fields in the core's order (as nat_app.flows gives them to os-ken: the core names
    prerequisites first, which OVS requires), padded to 8 bytes."""
    body = b"".join(_oxm(k, v)[1] for k, v in fields.items())
    length = 4 + len(body)
    return struct.pack("!HH", OFPMT_OXM, length) + body + bytes(-length % 8)


def _actions(actions) -> bytes:
    out = []
    for action in actions:
        if isinstance(action, Output):
            out.append(_OUTPUT.pack(OFPAT_OUTPUT, 16, action.port, OFPCML_MAX))
        elif isinstance(action, ToController):
            out.append(_OUTPUT.pack(OFPAT_OUTPUT, 16, OFPP_CONTROLLER, OFPCML_NO_BUFFER))
        elif isinstance(action, DecTtl):
            out.append(struct.pack("!HH4x", OFPAT_DEC_NW_TTL, 8))
        elif isinstance(action, SetField):
            _, oxm = _oxm(action.name, action.value)
            length = 4 + len(oxm)
            out.append(struct.pack("!HH", OFPAT_SET_FIELD, length + -length % 8) + oxm + bytes(-length % 8))
        else:
            raise Unsupported(type(action).__name__)
    return b"".join(out)


def _flow_mod(m: AddFlow, xid: int) -> bytes:
    instructions = b"" if m.meter is None else struct.pack("!HHI", OFPIT_METER, 8, m.meter)  # OF 1.3 7.2.4
    if m.actions:
        actions = _actions(m.actions)
        instructions += struct.pack("!HH4x", OFPIT_APPLY_ACTIONS, 8 + len(actions)) + actions
    body = _FLOW_MOD.pack(m.cookie, 0, 0, OFPFC_ADD, m.idle_timeout, m.hard_timeout, m.priority, OFP_NO_BUFFER,
                          0, 0, OFPFF_SEND_FLOW_REM if m.notify_removal else 0) + _match(m.match) + instructions
    return _HEADER.pack(OFP_VERSION, OFPT_FLOW_MOD, _HEADER.size + len(body), xid) + body


def _packet_out(m: PacketOut, xid: int) -> bytes:
    actions = _actions(m.actions)
    in_port = OFPP_CONTROLLER if m.in_port is None else m.in_port
    body = _PACKET_OUT.pack(OFP_NO_BUFFER, in_port, len(actions)) + actions + bytes(m.data)
    return _HEADER.pack(OFP_VERSION, OFPT_PACKET_OUT, _HEADER.size + len(body), xid) + body
