"""NAT-PMP (RFC 6886) beside PCP on UDP 5351: what unmodified ``natpmpc`` and libnatpmp ask.

Pure, and stateless of its own: a NAT-PMP mapping *is* a PCP MAP lease
(RFC 6887 Appendix A: one set of mappings, one epoch), made by the lease
server's MAP logic, so it shares MAP's port space (the NAPT's), its per-origin
and per-MAC quotas, the per-host port limit (RFC 6888 REQ-4) and its ownership
rule: a mapping belongs to the origin (s1 port, MAC, IP) that made it, and
only that origin may renew or delete it (docs/DESIGN.md, "Ownership beyond PCP").

NAT-PMP has no nonce; its mappings carry :data:`NATPMP_NONCE`, so a PCP MAP
of the same origin with another nonce cannot take one over, nor NAT-PMP a
PCP client's lease (NOT_AUTHORIZED: "Not Authorized/Refused").
"""

from __future__ import annotations

from nat_app.lease_server import LeaseServer, Origin, Outcome, Refused
from nat_app.table import ANY, EntryKind
from netwire import natpmp, pcp
from netwire.natpmp import Result

__pure__ = True  # the purity marker of the restructured house (issue 11); tests/unit/test_purity.py lists it too

NATPMP_NONCE = b"NAT-PMP\0\0\0\0\0"  # the 96-bit PCP nonce of every NAT-PMP mapping (RFC 6887 Appendix A)

_RESULT_OF = {  # PCP's refusals in NAT-PMP's five codes (RFC 6886 3.5)
    pcp.Result.NOT_AUTHORIZED: Result.NOT_AUTHORIZED, pcp.Result.ADDRESS_MISMATCH: Result.NOT_AUTHORIZED,
    pcp.Result.MALFORMED_REQUEST: Result.NOT_AUTHORIZED, pcp.Result.UNSUPP_PROTOCOL: Result.NOT_AUTHORIZED,
    pcp.Result.NETWORK_FAILURE: Result.NETWORK_FAILURE, pcp.Result.NO_RESOURCES: Result.OUT_OF_RESOURCES,
    pcp.Result.USER_EX_QUOTA: Result.OUT_OF_RESOURCES, pcp.Result.CANNOT_PROVIDE_EXTERNAL: Result.OUT_OF_RESOURCES,
}


def handle(leases: LeaseServer, datagram: bytes, origin: Origin, now: float) -> Outcome:
    """Answer one NAT-PMP request; never raises for bad input (answered or dropped, and counted)."""
    counters = leases.counters
    counters.add("natpmp_requests")
    leases.expire(now)
    try:
        request = natpmp.decode_request(datagram)
    except natpmp.NatPmpError as exc:
        if exc.result is None:
            counters.add("natpmp_dropped:malformed")
            return Outcome(None)
        counters.add(f"natpmp_refused:{exc.result.name}")
        return Outcome(natpmp.error_answer(datagram, exc.result, leases.epoch(now)))
    if isinstance(request, natpmp.AddressRequest):
        return _address(leases, origin, now)
    return _mapping(leases, request, origin, now)


def _address(leases: LeaseServer, origin: Origin, now: float) -> Outcome:
    """RFC 6886 3.2: the global address this host's mappings get (RFC 4787 REQ-2's pairing)."""
    if not leases.config.is_inside_host(origin.ip):
        return _refused(leases, natpmp.AddressResponse(Result.NOT_AUTHORIZED, leases.epoch(now), "0.0.0.0"))
    leases.counters.add("natpmp_ok:EXTERNAL_ADDRESS")
    response = natpmp.AddressResponse(Result.SUCCESS, leases.epoch(now), leases.pool.paired(origin.ip))
    return Outcome(natpmp.encode_response(response))


def _mapping(leases: LeaseServer, request: natpmp.MapRequest, origin: Origin, now: float) -> Outcome:
    """RFC 6886 3.3 and 3.4 through the lease server's MAP: create, renew, delete, delete all."""
    epoch = leases.epoch(now)
    if request.internal_port == 0 and request.lifetime == 0:
        return _delete_all(leases, request, origin, now)
    try:
        if not leases.config.is_inside_host(origin.ip):
            raise Refused(pcp.Result.ADDRESS_MISMATCH, f"{origin.ip} is no host address of the inside network")
        outcome, info, lifetime = leases.map_port(_as_map(request, origin), origin, now)
    except Refused as exc:
        failed = natpmp.MapResponse(request.protocol, _RESULT_OF.get(exc.result, Result.NOT_AUTHORIZED), epoch,
                                    request.internal_port, 0, 0)
        return _refused(leases, failed)
    leases.counters.add(f"natpmp_ok:{natpmp.OPCODE_OF[request.protocol].name}")
    external = _external_port(info, lifetime)
    outcome.response = natpmp.encode_response(natpmp.MapResponse(
        request.protocol, Result.SUCCESS, epoch, request.internal_port, external, lifetime))
    return outcome


def _delete_all(leases: LeaseServer, request: natpmp.MapRequest, origin: Origin, now: float) -> Outcome:
    """RFC 6886 3.4: internal port 0, lifetime 0 deletes the client's mappings of the protocol;
    only NAT-PMP mappings of this very origin (the MAP owner check refuses any other)."""
    removed = []
    for entry in leases.table.entries_of(request.protocol, origin.ip):
        if entry.kind is not EntryKind.CLIENT_ALG or entry.foreign is not ANY:
            continue
        single = natpmp.MapRequest(request.protocol, entry.private_gpn or 0, 0, 0)
        try:
            removed += leases.map_port(_as_map(single, origin), origin, now)[0].removed
        except Refused:
            continue  # a PCP client's lease, or not this origin's: not ours to delete
    leases.counters.add(f"natpmp_ok:{natpmp.OPCODE_OF[request.protocol].name}")
    response = natpmp.MapResponse(request.protocol, Result.SUCCESS, leases.epoch(now), 0, 0, 0)
    return Outcome(natpmp.encode_response(response), removed=removed)


def _as_map(request: natpmp.MapRequest, origin: Origin) -> pcp.Request:
    """The PCP MAP that means the same (RFC 6887 Appendix A): foreign any, the NAT-PMP nonce."""
    info = pcp.MapInfo(NATPMP_NONCE, request.protocol, request.internal_port, request.suggested_port, None)
    return pcp.Request(pcp.Opcode.MAP, request.lifetime, origin.ip, info)



def _external_port(info: pcp.Info | None, lifetime: int) -> int:
    """The mapped external port: a deletion answers port 0 (RFC 6886 3.4), a mapping its MAP body's port."""
    if not lifetime:
        return 0
    if not isinstance(info, pcp.MapInfo | pcp.PeerInfo):
        raise RuntimeError(f"a MAP lease of lifetime {lifetime} answered {type(info).__name__}, not a MAP body")
    return info.external_port


def _refused(leases: LeaseServer, response: natpmp.Response) -> Outcome:
    leases.counters.add(f"natpmp_refused:{response.result.name}")
    return Outcome(natpmp.encode_response(response))
