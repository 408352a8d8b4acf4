"""The keying judge (conformance.keying) fails whenever a cell was not keyed as the report says.

A manually keyed cell's evidence, claimed IKE-keyed, must fail; so must an
IKE-keyed cell's evidence claimed manual, and IKE evidence with any one link
missing: the SPIi not a cookie the NAT leased to that client (FIG. 8 step
801), no ChildEstablished for the SPIs the packets used, the responder having
seen a NAT, tshark unable to open the client's IKE_AUTH, IKE moved off port
500, keys from the config. The matrix judge (``judge_cell``) carries it into
CL-SPI and, for IKE cells, CL-COOKIE.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conformance.keying import IKE_AUTH, IKE_SA_INIT, AgentKeying, KeyingEvidence, judge_keying
from conformance.matrix import Cell
from conformance.scenarios import client as judge
from tests.unit.test_judges_fail import _record, good_run

GLOBAL, SRV1 = "203.0.113.1", "203.0.113.100"


def _client(i: int) -> AgentKeying:
    name = f"h{i}"
    spi_i, spi_in, spi_out = f"{0xA0 + i:016x}", 0x7000 + i, 0xC000 + i
    events = [{"event": "IkeEstablished", "spi_i": spi_i, "nat_local": False, "nat_peer": False},
              {"event": "ChildEstablished", "protocol": "AH", "mode": "tunnel", "inbound_spi": f"{spi_in:08x}",
               "outbound_spi": f"{spi_out:08x}"}]
    return AgentKeying(name, f"10.0.0.{i}", GLOBAL, 0, True, events, spi_in, spi_out, 40)


def ike_evidence() -> KeyingEvidence:
    """Three clients keyed by IKE, every link of the chain present."""
    members = [_client(i) for i in (1, 2, 3)]
    table = [{"protocol": 17, "udp_port": 500, "private_ip": c.private_ip, "global_ip": GLOBAL,
              "global_gpn": int(c.events[0]["spi_i"], 16), "kind": "CLIENT-ALG"} for c in members]
    rows = []
    for c in members:
        spi_i = c.events[0]["spi_i"]
        rows += [{"ip.src": GLOBAL, "ip.dst": SRV1, "udp.srcport": "500", "isakmp.ispi": spi_i,
                  "isakmp.exchangetype": IKE_SA_INIT},
                 {"ip.src": SRV1, "ip.dst": GLOBAL, "udp.srcport": "500", "isakmp.ispi": spi_i,
                  "isakmp.exchangetype": IKE_SA_INIT},
                 {"ip.src": GLOBAL, "ip.dst": SRV1, "udp.srcport": "500", "isakmp.ispi": spi_i,
                  "isakmp.exchangetype": IKE_AUTH, "isakmp.id.data.fqdn": f"{c.name}.natlab,sgw1.natlab",
                  "isakmp.spi": f"{c.spi_in:08x}"}]
    responder = [{"event": "IkeEstablished", "spi_i": c.events[0]["spi_i"], "nat_local": False, "nat_peer": False}
                 for c in members]
    return KeyingEvidence("ike", "AH", "tunnel", members, responder, table, rows)


def manual_evidence() -> KeyingEvidence:
    """Three clients keyed by their configs: [[sa]] tables, no IKE anywhere."""
    members = [dataclasses.replace(_client(i), config_sas=2, config_ike=False, events=[]) for i in (1, 2, 3)]
    return KeyingEvidence("manual", "AH", "tunnel", members)


def _failed(ev: KeyingEvidence) -> list[str]:
    checks, _ = judge_keying(ev)
    return [text for ok, text in checks if not ok]


def test_complete_evidence_passes_for_either_keying() -> None:
    assert _failed(ike_evidence()) == []
    assert _failed(manual_evidence()) == []


def test_a_manually_keyed_cell_claiming_ike_fails() -> None:
    failed = _failed(dataclasses.replace(manual_evidence(), claimed="ike"))
    assert any("no ChildEstablished" in f for f in failed) and any("not a cookie" in f for f in failed)
    assert any("tshark opened no IKE_AUTH" in f for f in failed)


def test_an_ike_keyed_cell_claiming_manual_keys_fails() -> None:
    failed = _failed(dataclasses.replace(ike_evidence(), claimed="manual"))
    assert any("IKE events" in f for f in failed) and any("IKE messages on the peer's wire" in f for f in failed)


def test_nothing_passes_on_empty_evidence() -> None:
    for claimed in ("ike", "manual"):
        empty = [dataclasses.replace(c, config_sas=0, config_ike=False, events=[], packets_at_peer=0)
                 for c in ike_evidence().clients]
        assert _failed(KeyingEvidence(claimed, "AH", "tunnel", empty))


def _spi_i_not_leased(ev):
    """The SPIi is not the cookie leased to this client (leased to h2 instead, or never)."""
    return dataclasses.replace(ev, table=[dict(e, private_ip="10.0.0.2") for e in ev.table])


def _cookie_on_another_global(ev):
    return dataclasses.replace(ev, table=[dict(e, global_ip="203.0.113.2") for e in ev.table])


def _child_spis_differ(ev):
    """The packets used SPIs that no ChildEstablished names (keys from somewhere else)."""
    return dataclasses.replace(ev, clients=[dataclasses.replace(c, spi_in=c.spi_in + 1) for c in ev.clients])


def _wrong_mode(ev):
    return dataclasses.replace(ev, mode="transport")


def _responder_saw_a_nat(ev):
    """NAT-D over the private address: the responder detects the NAT (the cookie control (b))."""
    return dataclasses.replace(ev, responder_events=[dict(e, nat_peer=True) for e in ev.responder_events])


def _responder_missed_a_client(ev):
    return dataclasses.replace(ev, responder_events=ev.responder_events[:2])


def _ike_auth_unreadable(ev):
    """tshark could not decrypt IKE_AUTH (no or wrong ikev2_decryption_table): no identities, no SPIs."""
    return dataclasses.replace(ev, ike_rows=[{k: v for k, v in r.items() if k not in ("isakmp.id.data.fqdn",
                                                                                     "isakmp.spi")}
                                             for r in ev.ike_rows])


def _floated_to_4500(ev):
    return dataclasses.replace(ev, ike_rows=[dict(r, **{"udp.srcport": "4500"}) for r in ev.ike_rows])


def _private_source_on_the_wire(ev):
    return dataclasses.replace(ev, ike_rows=[*ev.ike_rows, dict(ev.ike_rows[0], **{"ip.src": "10.0.0.1"})])


def _keys_in_the_config(ev):
    return dataclasses.replace(ev, clients=[dataclasses.replace(c, config_sas=2) for c in ev.clients])


def _nothing_verified(ev):
    return dataclasses.replace(ev, clients=[dataclasses.replace(c, packets_at_peer=0) for c in ev.clients])


@pytest.mark.parametrize("variant", [
    _spi_i_not_leased, _cookie_on_another_global, _child_spis_differ, _wrong_mode, _responder_saw_a_nat,
    _responder_missed_a_client, _ike_auth_unreadable, _floated_to_4500, _private_source_on_the_wire,
    _keys_in_the_config, _nothing_verified,
], ids=lambda f: f.__name__)
def test_ike_keying_fails_without_each_link(variant) -> None:
    assert _failed(variant(ike_evidence()))


@pytest.mark.parametrize("variant", [
    lambda ev: dataclasses.replace(ev, clients=[dataclasses.replace(c, config_ike=True) for c in ev.clients]),
    lambda ev: dataclasses.replace(ev, clients=[dataclasses.replace(c, events=[{"event": "IkeEstablished"}])
                                                for c in ev.clients]),
    lambda ev: dataclasses.replace(ev, ike_rows=[{"isakmp.exchangetype": IKE_SA_INIT}]),
    _nothing_verified,
], ids=["ike-table-in-config", "ike-events", "ike-on-the-wire", "nothing-verified"])
def test_manual_keying_fails_when_anything_says_ike_or_nothing_verified(variant) -> None:
    assert _failed(variant(manual_evidence()))


def test_the_matrix_judge_fails_cl_spi_when_a_manual_cell_claims_ike(tmp_path: Path) -> None:
    """judge_cell: the manual run of test_judges_fail, claimed IKE-keyed, fails CL-SPI and CL-COOKIE."""
    run, views = good_run(Cell("esp", "transport"), tmp_path)
    results = judge.judge_cell(_record(tmp_path), run, views)
    assert {r.behaviour: r.verdict for r in results if r.behaviour.startswith("CL-")} == {
        "CL-SPI": "pass", "CL-UNIQ": "pass"}
    assert all(r.scenario.endswith("manual-keys") for r in results if r.behaviour.startswith("CL-"))
    claimed = judge.judge_cell(_record(tmp_path), dataclasses.replace(run, keying="ike"), views)
    verdicts = {r.behaviour: r.verdict for r in claimed if r.behaviour.startswith("CL-")}
    assert verdicts == {"CL-SPI": "fail", "CL-UNIQ": "pass", "CL-COOKIE": "fail"}
