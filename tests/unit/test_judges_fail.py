"""Every judge fails on evidence in which its behaviour is absent, and nothing passes on empty input.

The judges of conformance/scenarios/client.py and napt.py are fed evidence
built by hand (verdicts as the oracles would give them, agent status files,
the NAT's table): first a run in which every behaviour is present, which must
pass, then the same run with one behaviour taken away (the variant named in
each test), which must fail that behaviour's verdict. A judge that cannot be
made to fail here would also pass an implementation that lacks the behaviour.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from client_agent.alg import TEST_ALG_PORT
from conformance.context import Record
from conformance.evidence import Packet
from conformance.matrix import Cell, behind_nat, clients
from conformance.oracles import ClearPacket, TsharkSummary, Verdict
from conformance.scenarios import client as judge
from conformance.scenarios import napt
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP

SRV1, SRV2 = "203.0.113.100", "203.0.113.101"
TRANSPORTS = {"TCP": 6, "UDP": 17}


def _record(tmp_path: Path) -> Record:
    return Record(ctx=None, scenario="unit", folder=tmp_path)


def _v(src, dst, *, proto, sport, dport, inner_src=None, inner_dst=None, icv_ok=True, checksum_ok=True,
       payload=b"", seq=1, protocol=50) -> Verdict:
    return Verdict(frame=1, time=0.0, src=src, dst=dst, protocol=protocol, spi=1, seq=seq, icv_ok=icv_ok,
                   decrypted=protocol == 51 or icv_ok, inner_src=inner_src or src, inner_dst=inner_dst or dst,
                   inner_protocol=proto, sport=sport, dport=dport, checksum_ok=checksum_ok, payload=payload)


def _clear(src, dst, proto, sport, dport, payload=b"", checksum_ok=True) -> ClearPacket:
    return ClearPacket(1, 0.0, src, dst, proto, sport, dport, checksum_ok, payload)


def good_run(cell: Cell, tmp_path: Path) -> tuple[judge.CellRun, judge.Views]:
    """A cell run in which every behaviour happened, as the judges would read it."""
    members = clients(3, 1)
    configs, peer = behind_nat(cell, members, random=lambda n: bytes(n))
    h1 = members[0]
    target = cell.target[1]
    ah = cell.protocol == "ah"
    run = judge.CellRun(cell, members, configs, peer, tmp_path, forged=judge.FORGED_COUNT if ah else 0)
    for c in members:
        run.apps[c.name] = {"curl": {"code": "200", "body_ok": True}, "iperf3-tcp": {"received": 10},
                            "iperf3-udp": {"received": 10}, "nc-tcp": {"ok": True},
                            "nc-udp": {"reply": f"i am {c.private_ip}:40001", "sent": f"i am {c.private_ip}:40001"}}
        run.statuses[c.name] = {"counters": {"delivered": 50, "drops": {}}}
        run.echo_log.append({"src": c.global_ip, "sport": c.ports[0], "text": f"i am {c.global_ip}:{c.ports[0]}"})
        run.table.setdefault("entries", []).extend(
            [{"protocol": 51 if ah else 50, "private_ip": c.private_ip, "global_ip": c.global_ip,
              "global_gpn": c.spi_in, "kind": "CLIENT-ALG"},
             {"protocol": 6, "private_ip": c.private_ip, "global_ip": c.global_ip, "global_gpn": c.ports[0],
              "kind": "CLIENT-ALG"}])
    run.statuses[h1.name]["counters"]["drops"] = {"bad_icv": judge.FORGED_COUNT} if ah else {}
    run.csum_errors = {cell.target[0]: {"TCP": 0, "UDP": 0}, h1.name: {"TCP": 0, "UDP": 0}}
    protocol = 51 if ah else 50
    at_peer = {}
    for c in members:
        at_peer[c.name] = [_v(c.global_ip, cell.peer_ip, proto=p, sport=c.ports[0], dport=80, protocol=protocol,
                              inner_src=c.global_ip if cell.mode == "tunnel" else None,
                              inner_dst=target if cell.mode == "tunnel" else None) for p in (6, 17)]
        at_peer[c.name].append(_v(c.global_ip, cell.peer_ip, proto=17, sport=c.ports[0], dport=TEST_ALG_PORT,
                                  protocol=protocol, payload=f"i am {c.global_ip}:{c.ports[0]}".encode()))
    tunnel_dst = h1.global_ip if cell.mode == "tunnel" else None
    h1_in = [_v(cell.peer_ip, h1.private_ip, proto=p, sport=80, dport=h1.ports[0], protocol=protocol,
                inner_src=target if cell.mode == "tunnel" else None, inner_dst=tunnel_dst) for p in (6, 17)]
    h1_in.append(_v(cell.peer_ip, h1.private_ip, proto=17, sport=TEST_ALG_PORT, dport=h1.ports[0], protocol=protocol,
                    inner_dst=tunnel_dst, payload=f"i am {h1.global_ip}:{h1.ports[0]}".encode()))
    h1_out = [_v(h1.private_ip, cell.peer_ip, proto=p, sport=40001, dport=80, protocol=protocol) for p in (6, 17)]
    tun = [_clear(h1.private_ip, target, p, 40001, 80) for p in (6, 17)]
    tun += [_clear(target, h1.private_ip, p, 80, 40001) for p in (6, 17)]
    tun.append(_clear(target, h1.private_ip, 17, TEST_ALG_PORT, 40001, f"i am {h1.private_ip}:40001".encode()))
    views = judge.Views(
        at_peer=at_peer, peer_to_client={c.name: [] for c in members},
        h1_in=[dataclasses.replace(v, icv_ok=False) for v in h1_in] if ah else h1_in,
        h1_in_as_global=h1_in if ah else [],
        h1_out=[dataclasses.replace(v, icv_ok=False) for v in h1_out] if ah else h1_out,
        h1_out_as_global=h1_out if ah else [],
        tun=tun, tshark=None if ah else TsharkSummary(esp_icv_good=9, tcp_checksum_good=3, udp_checksum_good=6),
        intranet=[_clear(target, h1.global_ip, p, 80, h1.ports[0]) for p in (6, 17)] if cell.mode == "tunnel" else [],
        h1_forged=[_v(cell.peer_ip, h1.private_ip, proto=17, sport=9, dport=h1.ports[0], protocol=51, icv_ok=False,
                      seq=judge.FORGED_SEQ)] * judge.FORGED_COUNT if ah else [],
    )
    return run, views


def verdicts(run, views, tmp_path) -> dict[tuple[str, str], str]:
    """(behaviour, transport or "") -> verdict."""
    out = {}
    for r in judge.judge_cell(_record(tmp_path), run, views):
        out[(r.behaviour, (r.cell or {}).get("transport", ""))] = r.verdict
    return out


CELLS = [Cell(p, m) for p in ("esp", "ah") for m in ("transport", "tunnel")]


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.name)
def test_a_run_with_every_behaviour_passes_every_judge(cell, tmp_path):
    run, views = good_run(cell, tmp_path)
    results = judge.judge_cell(_record(tmp_path), run, views)
    assert {r.scenario: r.reason for r in results if r.verdict != "pass"} == {}


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.name)
def test_every_judge_fails_on_empty_evidence(cell, tmp_path):
    run, _ = good_run(cell, tmp_path)
    run = dataclasses.replace(run, apps={c.name: {"curl": {"code": "", "body_ok": False}, "iperf3-tcp": {},
                                                  "iperf3-udp": {}, "nc-tcp": {"ok": False},
                                                  "nc-udp": {"reply": "", "sent": "x"}} for c in run.members},
                              statuses={}, table={}, echo_log=[], forged=0,
                              csum_errors={k: {} for k in run.csum_errors})
    empty = judge.Views({c.name: [] for c in run.members}, {c.name: [] for c in run.members}, [], [], [], [], [],
                        TsharkSummary(), [])
    assert {r.scenario + r.behaviour: r.verdict for r in judge.judge_cell(_record(tmp_path), run, empty)
            if r.verdict == "pass"} == {}


def _mutate_at_peer(views, **changes):
    return dataclasses.replace(views, at_peer={n: [dataclasses.replace(v, **changes) for v in vs]
                                               for n, vs in views.at_peer.items()})


def _private_source(run, views):
    """Variant: the NAT does not rewrite the source (no translation at all)."""
    return run, dataclasses.replace(views, at_peer={c.name: [dataclasses.replace(v, src=c.private_ip) for v in
                                                             views.at_peer[c.name]] for c in run.members})


def _icv_fails_at_peer(run, views):
    """Variant: ESP packets the peer cannot authenticate (they vanish from the inner-protocol counts)."""
    broken = {n: vs + [dataclasses.replace(vs[0], icv_ok=False, decrypted=False, inner_protocol=None)]
              for n, vs in views.at_peer.items()}
    return run, dataclasses.replace(views, at_peer=broken)


def _unjudged_at_peer(run, views):
    """Variant: ESP/AH at the peer that no SA of the run explains."""
    return run, dataclasses.replace(views, peer_unjudged={"unknown SPI": 2})


def _private_ports(run, views):
    """Variant: no port translation (compensation off): private ports reach the peer."""
    return run, _mutate_at_peer(views, sport=40001)


def _private_inner_source(run, views):
    """Variant: the tunnelled packet keeps h1's private address inside."""
    return run, _mutate_at_peer(views, inner_src="10.0.0.1")


def _wrong_checksums(run, views):
    """Variant: no checksum compensation: wrong inner checksums at the peer."""
    return run, _mutate_at_peer(views, checksum_ok=False)


def _udp_checksum_zero(run, views):
    """Variant: checksums zeroed instead of compensated (RFC 768 allows none for UDP): nothing verified."""
    return run, _mutate_at_peer(views, checksum_ok=None)


def _tshark_counts_bad(run, views):
    """Variant: tshark finds bad checksums in the clients' packets."""
    return run, dataclasses.replace(views, tshark=TsharkSummary(esp_icv_good=9, udp_checksum_good=3,
                                                                udp_checksum_bad=3, tcp_checksum_good=3))


def _ah_over_private(run, views):
    """Variant: AH computed over the private source: it verifies as sent, not as if from the global IP."""
    return run, dataclasses.replace(views, h1_out=views.h1_out_as_global,
                                    h1_out_as_global=[dataclasses.replace(v, icv_ok=False)
                                                      for v in views.h1_out_as_global])


def _alg_out_off(run, views):
    """Variant: no client ALG outbound: the private address reaches the far end."""
    at_peer = {c.name: [dataclasses.replace(v, payload=f"i am {c.private_ip}:40001".encode()) if v.payload else v
                        for v in views.at_peer[c.name]] for c in run.members}
    run.echo_log[:] = [{**e, "text": e["text"].replace(e["src"], "10.0.0.1")} for e in run.echo_log]
    return run, dataclasses.replace(views, at_peer=at_peer)


def _alg_in_off(run, views):
    """Variant: no client ALG inbound: the reply reaches h1's stack with the global address."""
    h1 = run.members[0]
    tun = [dataclasses.replace(p, payload=f"i am {h1.global_ip}:{h1.ports[0]}".encode()) if p.payload else p
           for p in views.tun]
    return run, dataclasses.replace(views, tun=tun)


def _alg_absent(run, views):
    """Variant: no client ALG in either direction: the echo sends h1's own text back, nc is satisfied."""
    h1 = run.members[0]
    wire = [dataclasses.replace(v, payload=f"i am {h1.private_ip}:40001".encode()) if v.payload else v
            for v in views.h1_in_as_global or views.h1_in]
    field = "h1_in_as_global" if views.h1_in_as_global else "h1_in"
    return run, dataclasses.replace(views, **{field: wire})


def _nothing_delivered(run, views):
    """Variant: the NAT does not deliver the peer's packets to the client."""
    run.statuses[run.members[1].name]["counters"]["delivered"] = 0
    return run, dataclasses.replace(views, h1_in=[], h1_in_as_global=[])


def _no_icv_verification(run, views):
    """Variant: the client never verifies AH ICVs: the forged packets are not dropped and reach its stack."""
    run.statuses[run.members[0].name]["counters"]["drops"] = {}
    h1 = run.members[0]
    leaked = _clear(run.cell.target[1], h1.private_ip, 17, 9, 40001, judge.FORGED_TEXT.encode())
    return run, dataclasses.replace(views, tun=[*views.tun, leaked])


def _forgeries_never_sent(run, views):
    """Variant of the evidence: the forged packets never reached h1's wire (nothing to drop proves nothing)."""
    run.statuses[run.members[0].name]["counters"]["drops"] = {}
    return run, dataclasses.replace(views, h1_forged=[])


def _no_reverse_port(run, views):
    """Variant: incoming packets reach h1's stack on the global port (no post-compensation)."""
    h1 = run.members[0]
    return run, dataclasses.replace(views, tun=[dataclasses.replace(p, dport=h1.ports[0]) if p.dst == h1.private_ip
                                                else p for p in views.tun])


def _no_reverse_address(run, views):
    """Variant: decapsulated packets reach h1's stack addressed to the global IP."""
    h1 = run.members[0]
    return run, dataclasses.replace(views, tun=[dataclasses.replace(p, dst=h1.global_ip) if p.src != h1.private_ip
                                                else p for p in views.tun])


def _incoming_checksum_absent(run, views):
    """Variant: incoming checksums zeroed instead of compensated: h1's stack verifies nothing."""
    h1 = run.members[0]
    return run, dataclasses.replace(views, tun=[dataclasses.replace(p, checksum_ok=None) if p.dst == h1.private_ip
                                                else p for p in views.tun])


def _foreign_spi_at_h1(run, views):
    """Variant: the NAT hands h1 packets for another client's SPI."""
    return run, dataclasses.replace(views, h1_unjudged={"unknown SPI": 4})


def _spi_on_other_global(run, views):
    """Variant: the client leases its SPI on a global IP that is not its ports'."""
    for e in run.table["entries"]:
        if e["protocol"] in (IPPROTO_ESP, IPPROTO_AH) and e["private_ip"] == run.members[0].private_ip:
            e["global_ip"] = "203.0.113.9"
    return run, views


def _shared_endpoint(run, views):
    """Variant: two clients appear as the same (global IP, port) at the peer."""
    a, b = run.members[0].name, run.members[1].name
    return run, dataclasses.replace(views, at_peer={**views.at_peer, b: [*views.at_peer[b], views.at_peer[a][0]]})


def _shared_spi_lease(run, views):
    """Variant: two clients hold the same SPI lease in the NAT's table."""
    spi = [e for e in run.table["entries"] if e["protocol"] in (IPPROTO_ESP, IPPROTO_AH)]
    spi[1].update(global_gpn=spi[0]["global_gpn"], global_ip=spi[0]["global_ip"])
    return run, views


ANY, TRANSPORT, TUNNEL, AH = CELLS, [c for c in CELLS if c.mode == "transport"], \
    [c for c in CELLS if c.mode == "tunnel"], [c for c in CELLS if c.protocol == "ah"]
VARIANTS = [
    ("OUT-SEND", _private_source, ANY), ("OUT-SEND", _icv_fails_at_peer, ANY), ("OUT-SEND", _unjudged_at_peer, ANY),
    ("OUT-PORT", _private_ports, TRANSPORT), ("OUT-TUNADDR", _private_inner_source, TUNNEL),
    ("OUT-CSUM", _wrong_checksums, ANY), ("OUT-CSUM", _udp_checksum_zero, ANY),
    ("OUT-CSUM", _icv_fails_at_peer, [c for c in CELLS if c.protocol == "esp"]),
    ("OUT-CSUM", _tshark_counts_bad, [c for c in CELLS if c.protocol == "esp"]),
    ("OUT-AH", _ah_over_private, AH), ("OUT-ALG", _alg_out_off, ANY), ("IN-ALG", _alg_in_off, ANY),
    ("IN-ALG", _alg_absent, ANY), ("IN-RECV", _nothing_delivered, ANY), ("IN-AH", _no_icv_verification, AH),
    ("IN-AH", _forgeries_never_sent, AH), ("IN-PORT", _no_reverse_port, TRANSPORT),
    ("IN-TUNADDR", _no_reverse_address, TUNNEL), ("IN-CSUM", _incoming_checksum_absent, ANY),
    ("CL-SPI", _foreign_spi_at_h1, ANY), ("CL-SPI", _spi_on_other_global, ANY), ("CL-UNIQ", _shared_endpoint, ANY),
    ("CL-UNIQ", _shared_spi_lease, ANY),
]


@pytest.mark.parametrize(("behaviour", "variant", "cell"),
                         [(b, v, c) for b, v, cells in VARIANTS for c in cells],
                         ids=lambda x: x.name if isinstance(x, Cell) else getattr(x, "__name__", x))
def test_each_judge_fails_on_the_variant_that_lacks_its_behaviour(behaviour, variant, cell, tmp_path):
    run, views = variant(*good_run(cell, tmp_path))
    got = {k: v for k, v in verdicts(run, views, tmp_path).items() if k[0] == behaviour}
    assert got and "fail" in got.values(), got


# ----------------------------------------------------------------------------- controls


def test_control_passes_only_when_valid_at_the_sender_and_invalid_at_the_receiver(tmp_path):
    cell = Cell("ah", "transport")
    run, views = good_run(cell, tmp_path)
    run.statuses[cell.peer] = {"counters": {"drops": {"bad_icv": 9}}}
    for c in run.members:
        run.apps[c.name] = {a: {"code": "", "body_ok": False, "received": 0, "ok": False, "reply": "", "sent": "x"}
                            for a in ("curl", "iperf3-tcp", "iperf3-udp", "nc-tcp", "nc-udp")}
    sent_ok = dataclasses.replace(views, h1_out=views.h1_out_as_global,
                                  at_peer={n: [dataclasses.replace(v, icv_ok=False) for v in vs]
                                           for n, vs in views.at_peer.items()})
    assert {r.verdict for r in judge.judge_control(_record(tmp_path), run, sent_ok, "CTRL-NOCOMP")} == {"pass"}
    garbage_at_sender = dataclasses.replace(sent_ok, h1_out=[dataclasses.replace(v, icv_ok=False)
                                                             for v in sent_ok.h1_out])
    assert {r.verdict for r in judge.judge_control(_record(tmp_path), run, garbage_at_sender,
                                                   "CTRL-NOCOMP")} == {"fail"}


def test_esp_control_fails_when_the_peer_cannot_decrypt(tmp_path):
    """A key mismatch also breaks the traffic, but it is not the failure the seed predicts."""
    cell = Cell("esp", "transport")
    run, views = good_run(cell, tmp_path)
    run.csum_errors[cell.target[0]] = {"TCP": 5, "UDP": 5}
    for c in run.members:
        run.apps[c.name] = {a: {"code": "", "body_ok": False, "received": 0, "ok": False, "reply": "", "sent": "x"}
                            for a in ("curl", "iperf3-tcp", "iperf3-udp", "nc-tcp", "nc-udp")}
    predicted = _mutate_at_peer(views, checksum_ok=False)
    assert {r.verdict for r in judge.judge_control(_record(tmp_path), run, predicted, "CTRL-NOCOMP")} == {"pass"}
    undecryptable = _mutate_at_peer(predicted, icv_ok=False, decrypted=False)
    assert {r.verdict for r in judge.judge_control(_record(tmp_path), run, undecryptable, "CTRL-NOCOMP")} == {"fail"}


def test_control_fails_on_empty_evidence(tmp_path):
    run, _ = good_run(Cell("ah", "transport"), tmp_path)
    empty = judge.Views({c.name: [] for c in run.members}, {}, [], [], [], [], [], None, [])
    assert {r.verdict for r in judge.judge_control(_record(tmp_path), run, empty, "CTRL-NOCOMP")} == {"fail"}


# ----------------------------------------------------------------------------- NAT-DROP


def _pkt(src, dst, proto, sport=None, dport=None, syn=False) -> Packet:
    return Packet(src, dst, proto, sport, dport, syn, False, None, None)


class _Host:
    def __init__(self, name, ip):
        self.name, self.ip = name, ip

    def IP(self):  # noqa: N802 - Mininet's name
        return self.ip


GLOBALS = ["203.0.113.1"]
TARGET = ("203.0.113.1", 47000)
H = [_Host(f"h{i}", f"10.0.0.{i}") for i in (1, 2, 3)]


def _drop_caps(*, srv2_sends=True) -> dict:
    srv2 = [_pkt(SRV2, TARGET[0], 17, 5000, TARGET[1])] * 2
    srv2 += [_pkt(SRV2, g, 6, 5001, p, syn=True) for g in GLOBALS for p in (80, 22)]
    srv2 += [_pkt(SRV2, g, 17, 5002, 53) for g in GLOBALS] * 2
    return {
        "h1-eth0": [_pkt("10.0.0.1", SRV1, 17, 47000, 9), *[_pkt(SRV1, "10.0.0.1", 17, 9, 47000)] * 2,
                    *[_pkt("10.0.0.1", SRV1, 50)] * 3, *[_pkt("10.0.0.1", SRV1, 51)] * 3],
        "h2-eth0": [], "h3-eth0": [],
        "srv1-eth0": [*[_pkt(SRV1, TARGET[0], 17, 9, TARGET[1])] * 2,
                      *[_pkt(SRV1, g, 6, 5003, 8080, syn=True) for g in GLOBALS]],
        "srv2-eth0": srv2 if srv2_sends else [],
    }


def _nat_drop(caps, dropped=6):
    rec = _record(Path("."))
    mapped = [{"global_ip": TARGET[0], "global_gpn": TARGET[1]}]
    return (napt._judge_inbound(rec, caps, H, GLOBALS, TARGET, mapped, [], []).verdict,
            napt._judge_outbound(rec, caps, H[0], dropped, []).verdict)


def test_nat_drop_passes_when_everything_sent_was_dropped():
    assert _nat_drop(_drop_caps()) == ("pass", "pass")


def test_nat_drop_fails_when_the_unsolicited_packets_got_through():
    """Variant: a NAT with endpoint-independent filtering (or none): srv2's packets reach h1."""
    caps = _drop_caps()
    caps["h1-eth0"] = [*caps["h1-eth0"], _pkt(SRV2, "10.0.0.1", 17, 5000, 47000)]
    assert _nat_drop(caps)[0] == "fail"


def test_nat_drop_fails_when_esp_without_a_lease_gets_out():
    """Variant: a NAT that forwards protocols it does not support."""
    caps = _drop_caps()
    caps["srv1-eth0"] = [*caps["srv1-eth0"], _pkt(GLOBALS[0], SRV1, 50)]
    assert _nat_drop(caps, dropped=0)[1] == "fail"


def test_nat_drop_is_no_pass_when_the_sender_never_sent():
    """Nothing arrived because nothing left: srv2's capture lacks its probes, h1's its ESP/AH."""
    assert _nat_drop(_drop_caps(srv2_sends=False))[0] == "fail"
    caps = _drop_caps()
    caps["h1-eth0"] = [p for p in caps["h1-eth0"] if p.proto not in (IPPROTO_ESP, IPPROTO_AH)]
    assert _nat_drop(caps)[1] == "fail"


def test_nat_drop_fails_on_empty_captures():
    assert _nat_drop({k: [] for k in _drop_caps()}, dropped=0) == ("fail", "fail")


# ----------------------------------------------------------------------------- CL-RENEW, tshark's direction, captures


GOOD_STATUS = {"leases": {"wanted": 2, "held": 2, "problems": {}, "counters": {"renewed": 8}}}  # Counter: no "lost"
GOOD_UDP = {"packets": 3000, "lost_packets": 0}


def _renew(status=GOOD_STATUS, udp=GOOD_UDP, before=None, after=None, renewed=8, on_wire=8) -> str:
    before = {1: 10.0, 2: 10.0} if before is None else before
    after = {1: 12.0, 2: 12.0} if after is None else after
    return judge.judge_renew(_record(Path(".")), status, udp, before, after, renewed, on_wire, []).verdict


def test_cl_renew_passes_on_renewals_in_place():
    assert _renew() == "pass"


@pytest.mark.parametrize("status", [
    {"leases": {"wanted": 2, "counters": {"renewed": 8}}},  # held and problems missing: unknown, not fine
    {"leases": {"wanted": 2, "held": 2, "problems": {}}},  # no counters at all
    {"leases": {"wanted": 2, "held": 1, "problems": {"esp": "lost: expired"}, "counters": {"renewed": 8, "lost": 1}}},
    {"leases": {"wanted": 2, "held": 2, "problems": {}, "counters": {"renewed": 1}}},
    {},
], ids=["held-and-problems-missing", "counters-missing", "a-lease-lost", "too-few-renewals", "no-status"])
def test_cl_renew_fails_when_the_status_does_not_show_renewals(status):
    assert _renew(status=status) == "fail"


def test_cl_renew_fails_when_entries_were_recreated_instead_of_renewed():
    """Variant: a client that lets leases lapse and asks again (new entries)."""
    assert _renew(after={3: 12.0, 4: 12.0}) == "fail"
    assert _renew(before={}, after={}) == "fail"


def test_tshark_rows_of_the_peer_itself_do_not_count_for_the_clients():
    rows = [{"ip.src": "203.0.113.1", "udp.checksum.status": "1"}, {"ip.src": SRV1, "udp.checksum.status": "1"},
            {"ip.src": "0.0.0.0", "udp.checksum.status": "1"}]
    assert judge.sent_by(rows, {"203.0.113.1"}) == rows[:1]


def test_every_behaviour_names_the_variant_that_makes_it_fail():
    """The report's "fails_without" column: each behaviour says how it could be absent, and any unit test it
    cites exists."""
    import re

    from conformance import registry

    root = Path(__file__).resolve().parents[2]
    for b in registry.load():
        assert b.variant.strip(), b.id
        for path, names in re.findall(r"(tests/unit/\w+\.py)::([\w*, ]+)", b.variant):
            text = (root / path).read_text()
            for name in (n.strip().rstrip("*") for n in names.split(",")):
                assert name in text, (b.id, path, name)


# ----------------------------------------------------------------------------- fault controls


def _no_alg(run, views):
    """The CTRL-NOALG variant: no client ALG in either direction."""
    return _alg_absent(*_alg_out_off(run, views))


def test_fault_control_passes_when_exactly_its_behaviours_fail(tmp_path):
    run, views = _no_alg(*good_run(Cell("esp", "transport"), tmp_path))
    results = judge.judge_cell(_record(tmp_path), run, views)
    control = judge.judge_fault(_record(tmp_path), results, "CTRL-NOALG", judge.NOALG_FAILS, [])
    assert (control.verdict, control.control) == ("pass", True), control.reason


def test_fault_control_fails_when_the_fault_removes_nothing_or_breaks_more(tmp_path):
    run, views = good_run(Cell("esp", "transport"), tmp_path)
    nothing = judge.judge_cell(_record(tmp_path), run, views)
    assert judge.judge_fault(_record(tmp_path), nothing, "CTRL-NOALG", judge.NOALG_FAILS, []).verdict == "fail"
    run, views = _private_ports(*_no_alg(*good_run(Cell("esp", "transport"), tmp_path)))
    more = judge.judge_cell(_record(tmp_path), run, views)
    assert judge.judge_fault(_record(tmp_path), more, "CTRL-NOALG", judge.NOALG_FAILS, []).verdict == "fail"
    assert judge.judge_fault(_record(tmp_path), [], "CTRL-NOALG", judge.NOALG_FAILS, []).verdict == "fail"


def test_noverify_fault_control_passes_when_only_in_ah_fails(tmp_path):
    """CTRL-NOVERIFY's variant: forgeries accepted and on h1's TUN; judged apart, they disturb no other check."""
    run, views = _no_icv_verification(*good_run(Cell("ah", "transport"), tmp_path))
    results = judge.judge_cell(_record(tmp_path), run, views)
    control = judge.judge_fault(_record(tmp_path), results, "CTRL-NOVERIFY", judge.NOVERIFY_FAILS, [])
    assert control.verdict == "pass", control.reason
