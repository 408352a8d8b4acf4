"""Two natlab agents keyed by IKEv2 on the live testbed: the example ``[ike]`` configs, curl over ESP.

h1 initiates, srv1 responds (client_agent/examples/ike-esp-transport-*.toml);
no keys in either file. Unmodified curl fetches a marker file across; srv1's
wire must carry IKE (UDP 500) and ESP only, never the marker; tshark must open
the IKE exchange with the ``ikev2_decryption_table`` and every ESP packet
with the ``esp_sa`` file the agents wrote as they negotiated.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

from client_agent.agent_cli import AgentProcess
from conformance.bench import PlainForwarding
from conformance.evidence import captures, read_pcap
from conformance.oracles import tshark_summary, tshark_verdicts
from nat_app.gpn import Definition
from netwire.pcp import ISAKMP_DEFINITION
from tests.testbed.test_ipsec_live import web_root
from topo.natlab import client_ip, server_ip

EXAMPLES = Path(__file__).resolve().parents[2] / "client_agent" / "examples"
H1, SRV1 = client_ip(1), server_ip(1)
ISAKMP_KEY = Definition.from_wire(ISAKMP_DEFINITION).key  # the NAT table's protocol value for UDP-500 GPNs


def wait_for_child(agent: AgentProcess, timeout: float = 15) -> dict:
    """Until the agent's status shows a negotiated CHILD_SA installed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads((agent.run_dir / "status.json").read_text())
        if (status.get("ike") or {}).get("children", 0) >= 1:
            return status
        time.sleep(0.2)
    raise AssertionError(f"no CHILD_SA within {timeout}s: {agent.log_tail()}")


def test_two_agents_keyed_by_ike_carry_curl_over_esp(make_testbed, tmp_path: Path) -> None:
    tb = make_testbed(clients=1, servers=1, globals=1)
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    www, marker = web_root(tmp_path)
    with ExitStack() as stack:
        stack.enter_context(PlainForwarding(tb, h1, srv1))
        with captures([(srv1, "srv1-eth0")], tmp_path / "pcap") as pcaps:
            responder = stack.enter_context(AgentProcess(srv1, EXAMPLES / "ike-esp-transport-srv1.toml",
                                                         tmp_path / "agent-srv1"))
            initiator = stack.enter_context(AgentProcess(h1, EXAMPLES / "ike-esp-transport-h1.toml",
                                                         tmp_path / "agent-h1"))
            wait_for_child(initiator)
            wait_for_child(responder)
            serve = srv1.popen(["python3", "-m", "http.server", "8000", "--bind", SRV1, "--directory", str(www)])
            try:
                time.sleep(0.8)
                body = h1.cmd(f"curl -s --max-time 10 http://{SRV1}:8000/secret.txt")
            finally:
                serve.terminate()
                serve.wait()
        for agent in (initiator, responder):
            assert agent.stop() == 0, agent.log_tail()
    status = json.loads((initiator.run_dir / "status.json").read_text())  # the final one, written on exit
    assert body.encode().strip() == marker * 200
    assert status["counters"]["protected"] > 5 and not status["counters"]["drops"], status["counters"]
    between = [p for p in read_pcap(pcaps["srv1-eth0"]) if {p.src, p.dst} == {H1, SRV1}]
    assert {p.proto for p in between} == {17, 50}, sorted({p.proto for p in between})  # IKE and ESP only
    assert marker not in pcaps["srv1-eth0"].read_bytes()
    summary = tshark_summary(tshark_verdicts(pcaps["srv1-eth0"], responder.run_dir))
    assert summary.esp_icv_good > 5 and not summary.esp_icv_bad, summary
    ike = subprocess.run(["tshark", "-n", "-r", str(pcaps["srv1-eth0"]), "-V", "-Y", "isakmp"], capture_output=True,
                         text=True, env={"WIRESHARK_CONFIG_DIR": str(responder.run_dir), "PATH": "/usr/bin:/bin"})
    assert "ID_FQDN: h1.natlab" in ike.stdout and "ID_FQDN: srv1.natlab" in ike.stdout
    checks = re.findall(r"Integrity Checksum Data: .*\[(correct|incorrect)", ike.stdout)
    assert checks and set(checks) == {"correct"}, checks


def test_agents_keyed_by_ike_through_the_extensible_nat(make_testbed, tmp_path: Path) -> None:
    """FIG. 8 801-802 in the agent: SPIi and CHILD SPI leased before use; curl across the NAT over that ESP."""
    tb = make_testbed(clients=1, servers=1, globals=1)
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    www, marker = web_root(tmp_path)
    with ExitStack() as stack:
        with captures([(srv1, "srv1-eth0")], tmp_path / "pcap") as pcaps:
            responder = stack.enter_context(AgentProcess(srv1, EXAMPLES / "ike-esp-transport-nat-srv1.toml",
                                                         tmp_path / "agent-srv1"))
            initiator = stack.enter_context(AgentProcess(h1, EXAMPLES / "ike-esp-transport-nat-h1.toml",
                                                         tmp_path / "agent-h1"))
            status = wait_for_child(initiator)
            wait_for_child(responder)
            table = tb.table()
            serve = srv1.popen(["python3", "-m", "http.server", "8000", "--bind", SRV1, "--directory", str(www)])
            try:
                time.sleep(0.8)
                body = h1.cmd(f"curl -s --max-time 10 http://{SRV1}:8000/secret.txt")
            finally:
                serve.terminate()
                serve.wait()
        for agent in (initiator, responder):
            assert agent.stop() == 0, agent.log_tail()
    assert body.encode().strip() == marker * 200, initiator.log_tail()
    inbound = [s for s in status["sas"] if s["direction"] == "inbound"]
    entries = [e for e in table["entries"] if e["kind"] == "CLIENT-ALG"]
    leased_spis = {e["global_gpn"] for e in entries if e["protocol"] == 50}
    assert inbound and all(int(s["spi"], 16) in leased_spis for s in inbound), (status["sas"], entries)
    ike_entries = [e for e in entries if e["protocol"] == ISAKMP_KEY]
    assert ike_entries, entries  # the cookie lease (ISAKMP GPN) stands in the NAT's table
    wire = read_pcap(pcaps["srv1-eth0"])
    assert not [p for p in wire if p.src.startswith("10.")], "a private address reached srv1"
    assert marker not in pcaps["srv1-eth0"].read_bytes()
    summary = tshark_summary(tshark_verdicts(pcaps["srv1-eth0"], responder.run_dir))
    assert summary.esp_icv_good > 5 and not summary.esp_icv_bad, summary
    ike = subprocess.run(["tshark", "-n", "-r", str(pcaps["srv1-eth0"]), "-T", "fields", "-e", "isakmp.ispi",
                          "-e", "ip.src", "-e", "udp.srcport", "-Y", "isakmp and ip.dst == " + SRV1],
                         capture_output=True, text=True).stdout.split()
    assert ike and ike[1] == "203.0.113.1" and ike[2] == "500", ike[:6]
    assert int(ike[0], 16) in {e["global_gpn"] for e in ike_entries}, (ike[:3], ike_entries)


def test_child_sa_rekeyed_under_iperf3_through_the_nat_keeps_the_connection(make_testbed, tmp_path: Path) -> None:
    """CHILD_SA lifetime of 3 s, iperf3 TCP for 10 s across: several rekeys, the connection survives; each new
    inbound SPI was leased before it was proposed, each old one released (step 802 both ways)."""
    from conformance import apps

    tb = make_testbed(clients=1, servers=1, globals=1)
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    h1_config = tmp_path / "h1.toml"
    h1_config.write_text((EXAMPLES / "ike-esp-transport-nat-h1.toml").read_text().replace(
        'mode = "transport"', 'mode = "transport"\nchild_rekey = 3'))
    with ExitStack() as stack:
        responder = stack.enter_context(AgentProcess(srv1, EXAMPLES / "ike-esp-transport-nat-srv1.toml",
                                                     tmp_path / "agent-srv1"))
        initiator = stack.enter_context(AgentProcess(h1, h1_config, tmp_path / "agent-h1"))
        wait_for_child(initiator)
        with apps.iperf3_server(srv1):
            tcp = apps.iperf3(h1, SRV1, seconds=10)
        table = tb.table()
        for agent in (initiator, responder):
            assert agent.stop() == 0, agent.log_tail()
    status = json.loads((initiator.run_dir / "status.json").read_text())
    log = initiator.log.read_text()
    assert "error" not in tcp and tcp["received"] > 1_000_000, tcp
    assert status["ike"]["events"]["ChildEstablished"] >= 3, status["ike"]
    released = re.findall(r"CHILD SPI 0x([0-9a-f]{8}) released, 0x([0-9a-f]{8}) being leased", log)
    assert len(released) >= 2, log[-3000:]
    assert status["leases"]["counters"].get("retired", 0) >= 2, status["leases"]
    esp = {e["global_gpn"] for e in table["entries"] if e["kind"] == "CLIENT-ALG" and e["protocol"] == 50}
    assert not esp & {int(old, 16) for old, _ in released[:-1]}, (esp, released)  # released leases are gone
    print(f"rekeys under iperf3: {len(released)}; TCP {tcp['bps'] / 1e6:.0f} Mbit/s; "
          f"drops {status['counters']['drops']}")
