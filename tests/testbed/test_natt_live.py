"""NAT-T (RFC 3948, RFC 7296 section 2.23) live: three clients behind one global IP, through natlab's
NAPT and through the classic Linux NAT, in tunnel then transport mode; strongSwan initiating to natlab.

The first NAT-T checks (natlab <-> natlab through the NAPT with curl, tshark and keepalives; natlab ->
strongSwan's charon with curl; the no-NAT control keeping raw ESP) are the report's "baseline" group:
conformance/scenarios/baseline.py, run by ``natlab demo``, which tests/testbed/test_launchers.py runs
in CI. They are not run twice.
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest

from conformance.apps import web_server
from conformance.natt_peers import NAT_ADDRESS, both_ways, both_ways_checks
from conformance.oracles import tshark_summary, tshark_verdicts
from tests.testbed.natt_fixtures import (
    KEEPALIVE_SECONDS,
    curls_at_once,
    natt_rows,
    server_config,
    spi_owners,
    start_agent,
    start_clients,
)
from tests.testbed.test_ike_agents_live import wait_for_child
from tests.testbed.test_ipsec_live import web_root
from topo.natlab import client_ip, server_ip

H1, SRV1, GLOBAL = client_ip(1), server_ip(1), NAT_ADDRESS


# --- three clients behind one global IP, tunnel then transport, through either NAT (issue 15 item 2) -----------

URL = f"http://{SRV1}:8000/secret.txt"
TUNNEL_PORTS, ALONE_PORTS, TOGETHER_PORTS = 43000, 41000, 42000  # curl's local port: base + client number


def web_service(srv1, www: Path):
    return web_server(srv1, SRV1, www)


def connection_owner(row: dict[str, str], base: int) -> str | None:
    """Whose curl a decrypted TCP segment belongs to, by the local port each client's curl was given."""
    for field in ("tcp.srcport", "tcp.dstport"):
        port = int(row[field]) if row[field] else 0
        if base < port <= base + 3:
            return f"h{port - base}"
    return None


def crossings(rows: list[dict[str, str]], owners: dict[int, str], base: int) -> dict[str, int]:
    """Per direction, how many ESP packets of each client's connection travelled under whose SA:
    ``"srv1->global h1-conn under h2-SA": 12``, resets counted apart (tshark's decryption of srv1's wire)."""
    counts: Counter[str] = Counter()
    for row in rows:
        conn = connection_owner(row, base)
        if conn is None or not row["esp.spi"]:
            continue
        way = "srv1->global" if row["ip.src"] == SRV1 else "global->srv1"
        reset = " RST" if row["tcp.flags.reset"] in ("1", "True") else ""
        counts[f"{way} {conn}-conn under {owners.get(int(row['esp.spi'], 16), '?')}-SA{reset}"] += 1
    return dict(sorted(counts.items()))


def tunnel_phase(srv1, hosts: list, www: Path, folder: Path) -> dict:
    """srv1 in tunnel mode, all clients at once: the selectors differ (each client's own inner address)."""
    from conformance.evidence import captures

    with ExitStack() as stack:
        server = start_agent(stack, srv1, server_config("tunnel"), folder / "agent-srv1")
        pcaps = stack.enter_context(captures([(srv1, "srv1-eth0")], folder / "pcap"))
        agents = start_clients(stack, hosts, "tunnel", folder)
        with web_service(srv1, www):
            bodies = curls_at_once(hosts, URL, TUNNEL_PORTS)
        drops = server.refresh()["counters"]["drops"]
        assert all(a.stop() == 0 for a in agents), [a.log_tail() for a in agents]
    assert server.stop() == 0, server.log_tail()
    return {"bodies": bodies, "rows": natt_rows(pcaps["srv1-eth0"], server.run_dir), "owners": spi_owners(agents),
            "drops": drops}


def transport_phase(srv1, hosts: list, www: Path, folder: Path) -> dict:
    """srv1 in transport mode: h1 alone first, then h2 and h3 join and all three fetch at once."""
    from conformance.evidence import captures

    with ExitStack() as stack:
        server = start_agent(stack, srv1, server_config("transport"), folder / "agent-srv1")
        pcaps = stack.enter_context(captures([(srv1, "srv1-eth0"), (srv1, "ipsec0")], folder / "pcap"))
        agents = start_clients(stack, hosts[:1], "transport", folder)
        with web_service(srv1, www):
            alone = curls_at_once(hosts[:1], URL, ALONE_PORTS)
            agents += start_clients(stack, hosts[1:], "transport", folder)
            together = curls_at_once(hosts, URL, TOGETHER_PORTS)
        status = server.refresh()
        assert all(a.stop() == 0 for a in agents), [a.log_tail() for a in agents]
    assert server.stop() == 0, server.log_tail()
    return {"alone": alone, "together": together, "rows": natt_rows(pcaps["srv1-eth0"], server.run_dir),
            "owners": spi_owners(agents), "drops": status["counters"]["drops"], "tun": pcaps["ipsec0"],
            "server_sas": status["sas"]}


@pytest.mark.parametrize("nat", ["extensible", "classic"])
def test_three_clients_behind_one_global_ip_in_tunnel_then_transport_mode(make_testbed, tmp_path: Path,
                                                                          nat: str) -> None:
    """Tunnel mode: every client's curl crosses, each under its own SA and NAT mapping. Transport mode: h1 alone
    crosses with the inner checksum fixed (tshark: bad on srv1's wire, good in srv1's TUN); then three
    clients' SAs with one peer have the same selector at srv1 (RFC 3948 section 5.2): what happens is
    recorded from tshark's decryption of srv1's wire, packet by packet, SA against connection."""
    tb = make_testbed(clients=3, servers=1, globals=1, nat=nat)
    hosts, srv1 = [tb.host(f"h{i}") for i in (1, 2, 3)], tb.host("srv1")
    www, marker = web_root(tmp_path)
    tunnel = tunnel_phase(srv1, hosts, www, tmp_path / "tunnel")
    transport = transport_phase(srv1, hosts, www, tmp_path / "transport")
    want = (marker * 200).decode()

    assert {name: body.strip() == want for name, body in tunnel["bodies"].items()} == {"h1": True, "h2": True,
                                                                                        "h3": True}
    rows = tunnel["rows"]
    assert rows and all(r["esp.icv_good"] in ("1", "True") for r in rows), rows[:5]
    assert {r["ip.src"] for r in rows} == {GLOBAL, SRV1} and len({r["udp.srcport"] for r in rows
                                                                  if r["ip.src"] == GLOBAL}) == 3
    tunnel_crossings = crossings(rows, tunnel["owners"], TUNNEL_PORTS)
    assert all(k.split()[1].split("-")[0] == k.split()[3].split("-")[0] for k in tunnel_crossings), tunnel_crossings
    assert not tunnel["drops"], tunnel["drops"]

    assert transport["alone"]["h1"].strip() == want  # item 1: curl over transport-mode NAT-T through the NAT
    alone = [r for r in transport["rows"] if connection_owner(r, ALONE_PORTS) == "h1"]
    inbound = [r["tcp.checksum.status"] for r in alone if r["ip.src"] == GLOBAL]
    assert inbound and set(inbound) == {"0"}, inbound  # on srv1's wire: h1's checksum, the NAT's address
    tun = tshark_summary(tshark_verdicts(transport["tun"], tmp_path))
    assert tun.tcp_checksum_good > len(inbound) and not tun.tcp_checksum_bad, tun  # what srv1's stack got: fixed
    assert all(r["esp.icv_good"] in ("1", "True") for r in transport["rows"])
    outcome = {"nat": nat, "together_ok": {n: b.strip() == want for n, b in transport["together"].items()},
               "crossings": crossings(transport["rows"], transport["owners"], TOGETHER_PORTS),
               "srv1_drops": transport["drops"], "srv1_sas": len(transport["server_sas"])}
    (tmp_path / "overlap.json").write_text(json.dumps(outcome, indent=1))
    print(f"RFC 3948 5.2 through the {nat} NAT:", json.dumps(outcome))
    assert_newest_sa_takes_the_selector(outcome)


def assert_newest_sa_takes_the_selector(outcome: dict) -> None:
    """What the wire showed on the first runs (README, "NAT-T completed"): each client sends under its own SA,
    but srv1's three policies have one selector (srv1 <-> the global IP), and the newest, a late joiner's,
    wins. srv1 drops the others' segments as policy violations and answers the winner's connection only."""
    winners = [name for name, ok in outcome["together_ok"].items() if ok]
    assert len(winners) == 1 and winners != ["h1"], outcome
    crossed = outcome["crossings"]
    assert all(k.split()[1][:2] == k.split()[3][:2] for k in crossed if k.startswith("global->srv1")), crossed
    assert {k for k in crossed if k.startswith("srv1->global")} == {f"srv1->global {winners[0]}-conn under "
                                                                    f"{winners[0]}-SA"}, crossed
    assert outcome["srv1_drops"].get("policy", 0) > 0, outcome


# --- strongSwan initiating NAT-T to natlab's agent (issue 15 item 3) --------------------------------------------

def key_pairs(esp_sa: str) -> set[tuple[str, str, str]]:
    """(SPI, encryption key, integrity key) of every line of an ``esp_sa`` file, addresses left out."""
    fields = [[f.strip('"') for f in line.split(",")] for line in esp_sa.splitlines()]
    return {(f[3], f[5], f[7]) for f in fields}


def test_strongswan_behind_the_napt_initiates_to_natlab_and_ping_curl_iperf3_cross_both_ways(make_testbed,
                                                                                           tmp_path: Path) -> None:
    """charon (libipsec) on h1, behind natlab's NAPT, initiates; natlab's agent on srv1 answers and follows it to
    port 4500. Unmodified ping, curl and iperf3 run in both directions through charon's ipsec0 and natlab's TUN;
    tshark decrypts srv1's wire once with natlab's keys and once with the keys charon logged, every ICV good."""
    from conformance.evidence import captures
    from tests.testbed.test_ike_strongswan_live import (
        H1_INNER,
        SRV1_INNER,
        _tail,
        charon_in,
        inner_addresses,
        installed_sas,
        peering,
    )
    from tests.testbed.test_ike_strongswan_live import PSK as SWAN_PSK
    from topo.strongswan import charon_esp_sa

    tb = make_testbed(clients=1, servers=1, globals=1)
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    inner_addresses(h1, srv1)
    www, marker = web_root(tmp_path)
    srv1_config = (f'[agent]\nname = "srv1"\nroutes = ["{H1_INNER}/32"]\naddress = "{SRV1}"\n\n[ike]\n'
                   f'role = "responder"\nlocal_id = "srv1.natlab"\nremote_id = "h1.natlab"\npsk = "{SWAN_PSK}"\n'
                   f'proposals = ["aes128-sha256-modp2048"]\nesp = ["aes128gcm16"]\nmode = "tunnel"\n'
                   f'local_ts = ["{SRV1_INNER}/32"]\nremote_ts = ["{H1_INNER}/32"]\nkeepalive = {KEEPALIVE_SECONDS}\n')
    with ExitStack() as stack:
        responder = start_agent(stack, srv1, srv1_config, tmp_path / "agent-srv1")
        charon = stack.enter_context(charon_in(h1, tmp_path / "charon", peering(False, "h1")))
        pcaps = stack.enter_context(captures([(srv1, "srv1-eth0")], tmp_path / "pcap"))
        initiated = h1.cmd(" ".join(charon.swanctl("--initiate", "--child", "natlab", "--timeout", "10")) + " 2>&1")
        sas = installed_sas(h1, charon)
        wait_for_child(responder)
        routes = h1.cmd("ip route show table all | grep ipsec0")
        seen = both_ways(h1, srv1, www, H1_INNER, SRV1_INNER)
        status = responder.refresh()
    assert responder.stop() == 0, responder.log_tail()
    log = charon.log.read_text(errors="replace")
    assert "initiate completed successfully" in initiated, (initiated[-2000:], _tail(charon.log))
    assert any("TUNNEL-in-UDP" in line for line in sas.splitlines()), sas
    assert "local host is behind NAT" in log, _tail(charon.log)  # the NAPT, not only libipsec's faked NAT
    failed = [text for ok, text in both_ways_checks(seen, (marker * 200).decode()) if not ok]
    assert not failed, (failed, routes)
    assert not status["counters"]["drops"], status["counters"]
    swan_keys = tmp_path / "charon-keys"
    swan_keys.mkdir()
    (swan_keys / "esp_sa").write_text(charon_esp_sa(log, initiator=True))
    assert key_pairs((swan_keys / "esp_sa").read_text()) == key_pairs(responder.keyfile.read_text())
    for keys in (responder.run_dir, swan_keys):
        rows = natt_rows(pcaps["srv1-eth0"], keys)
        ways = Counter("in" if r["ip.src"] == GLOBAL else "out" for r in rows)
        assert ways["in"] > 1000 and ways["out"] > 1000, ways  # iperf3's 2 MB each way among them
        assert all(r["esp.icv_good"] in ("1", "True") for r in rows), [r for r in rows if r["esp.icv_good"] != "1"][:3]
    print(f"strongSwan -> natlab NAT-T: {dict(ways)} ESP-in-UDP frames, ICVs good with both sides' keys; "
          f"natt {status['ike']['natt']['counters']}")
