"""The scapy layers (netwire.pcp_scapy) against the codec (netwire.pcp), both ways, for every opcode.

A message the codec builds dissects in scapy with the same field values; a
message built with scapy decodes in the codec to the same request or response.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.packet import Packet

from netwire import pcp
from netwire.pcp import Opcode
from netwire.pcp_scapy import BODIES, PCPEntry, PCPOption, PCPRequest, PCPResponse
from netwire.plan import GATEWAY_IP
from tests.unit.test_pcp_codec import ALL_OPTIONS, requests, responses

OPCODES = list(Opcode)


def _options(layer: Packet) -> tuple[tuple[int, bytes], ...]:
    found, option = [], layer.getlayer(PCPOption)
    while option is not None:
        found.append((option.code, bytes(option.data)))
        option = option.payload.getlayer(PCPOption) if option.payload else None
    return tuple(found)


def _entry_values(entry: PCPEntry) -> pcp.EntryRecord:
    return pcp.EntryRecord(pcp.ENTRY_KINDS[entry.kind - 1], entry.protocol, entry.private_ip, entry.private_gpn,
                           entry.global_ip, entry.global_gpn, entry.foreign_ip, entry.lifetime, entry.port)


def _body_values(header: Packet, opcode: Opcode, response: bool):
    """What scapy dissected, as the codec's dataclass."""
    kind = pcp.INFO_TYPES[opcode]
    if kind is None:
        return None
    body = header.getlayer(BODIES[opcode])
    if kind is pcp.ReadInfo:
        entries = tuple(_entry_values(e) for e in body.entries)
        return pcp.ReadInfo(bytes(body.nonce), entries, body.start, body.total if response else None)
    names = [f.name for f in dataclasses.fields(kind)]
    return kind(**{name: bytes(getattr(body, name)) if name == "nonce" else getattr(body, name) for name in names})


def _scapy_body(info) -> Packet | None:
    """The codec's dataclass, built as a scapy layer from field values (flags left to the layer)."""
    if info is None:
        return None
    opcode = next(o for o, k in pcp.INFO_TYPES.items() if k is type(info))
    values = {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
    if isinstance(info, pcp.ReadInfo):
        values["entries"] = [PCPEntry(kind=pcp.ENTRY_KINDS.index(e.kind) + 1,
                                      **{k: v for k, v in dataclasses.asdict(e).items() if k != "kind"})
                             for e in info.entries]
        values["total"] = info.total or 0
    return BODIES[opcode](**values)


def _with_options(packet: Packet, options) -> Packet:
    for code, data in options:
        packet = packet / PCPOption(code=code, data=data)
    return packet


@pytest.mark.parametrize("opcode", OPCODES, ids=lambda o: o.name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_codec_request_dissects_in_scapy_with_the_same_fields(opcode, data):
    request = data.draw(requests(opcode))
    udp = UDP(sport=pcp.CLIENT_PORT, dport=pcp.SERVER_PORT)
    frame = IP(bytes(IP(src=request.client_ip, dst=GATEWAY_IP) / udp / pcp.encode_request(request)))
    header = frame[PCPRequest]
    assert (header.version, header.R, header.opcode, header.lifetime, header.client_ip) == (
        2, 0, opcode, request.lifetime, request.client_ip)
    assert _body_values(header, opcode, response=False) == request.info
    assert _options(header) == request.options


@pytest.mark.parametrize("opcode", OPCODES, ids=lambda o: o.name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_codec_response_dissects_in_scapy_with_the_same_fields(opcode, data):
    response = data.draw(responses(opcode))
    udp = UDP(sport=pcp.SERVER_PORT, dport=pcp.CLIENT_PORT)
    frame = IP(bytes(IP(src=GATEWAY_IP, dst="10.0.0.1") / udp / pcp.encode_response(response)))
    header = frame[PCPResponse]
    assert (header.version, header.R, header.opcode, header.result, header.lifetime, header.epoch) == (
        2, 1, opcode, response.result, response.lifetime, response.epoch)
    if response.info is not None:
        assert _body_values(header, opcode, response=True) == response.info
    assert _options(header) == response.options


@pytest.mark.parametrize("opcode", OPCODES, ids=lambda o: o.name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_scapy_request_decodes_in_the_codec(opcode, data):
    request = data.draw(requests(opcode))
    packet = PCPRequest(lifetime=request.lifetime, client_ip=request.client_ip, opcode=opcode)
    body = _scapy_body(request.info)
    built = UDP(sport=pcp.CLIENT_PORT) / _with_options(packet / body if body is not None else packet, request.options)
    assert built[UDP].dport == pcp.SERVER_PORT
    assert pcp.decode_request(bytes(built[PCPRequest]), supported_options=ALL_OPTIONS) == request


@pytest.mark.parametrize("opcode", OPCODES, ids=lambda o: o.name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_scapy_response_decodes_in_the_codec(opcode, data):
    response = data.draw(responses(opcode).filter(lambda r: r.info is not None or opcode is Opcode.ANNOUNCE))
    packet = PCPResponse(opcode=opcode, result=response.result, lifetime=response.lifetime, epoch=response.epoch)
    body = _scapy_body(response.info)
    built = UDP(dport=pcp.CLIENT_PORT) / _with_options(packet / body if body is not None else packet,
                                                       response.options)
    assert built[UDP].sport == pcp.SERVER_PORT
    assert pcp.decode_response(bytes(built[PCPResponse])) == response


def test_unspecified_fields_show_as_none_and_flags_are_computed():
    from netwire.pcp_scapy import PCPLease

    layer = PCPLease(nonce=b"n" * 12, protocol=50, global_gpn=0, foreign_ip="203.0.113.100")
    raw = bytes(layer)
    assert raw[13] == pcp.LeaseInfo.FLAG_GLOBAL_GPN | pcp.LeaseInfo.FLAG_FOREIGN_IP  # a GPN of 0 is still specified
    again = PCPLease(raw)
    assert (again.private_gpn, again.global_gpn, again.global_ip) == (None, 0, None)
    assert "unspecified" in again.show(dump=True)


def test_the_r_bit_picks_the_header_whatever_the_port():
    wire = pcp.encode_response(pcp.Response(Opcode.ANNOUNCE, pcp.Result.SUCCESS, 0, 7, None))
    frame = UDP(bytes(UDP(sport=pcp.SERVER_PORT, dport=pcp.SERVER_PORT) / wire))
    assert frame.haslayer(PCPResponse) and frame[PCPResponse].epoch == 7
