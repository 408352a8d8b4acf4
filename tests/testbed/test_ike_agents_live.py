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
from contextlib import ExitStack
from pathlib import Path

from conformance.bench import PlainForwarding
from conformance.evidence import captures, read_pcap
from conformance.oracles import tshark_summary, tshark_verdicts
from nat_app.gpn import Definition
from nat_app.table import space_of_record
from netwire.pcp import ISAKMP_DEFINITION
from tests.testbed.ike_fixtures import fetch_marker, ike_agents, wait_for_child
from tests.testbed.test_ipsec_live import web_root
from topo.natlab import client_ip, server_ip

EXAMPLES = Path(__file__).resolve().parents[2] / "client_agent" / "examples"
H1, SRV1 = client_ip(1), server_ip(1)
ISAKMP_KEY = Definition.from_wire(ISAKMP_DEFINITION).key  # the GPN space of UDP-500 leases (protocol 17, udp_port 500)


def test_two_agents_keyed_by_ike_carry_curl_over_esp(make_testbed, tmp_path: Path) -> None:
    tb = make_testbed(clients=1, servers=1, globals=1)
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    www, marker = web_root(tmp_path)
    with ExitStack() as stack:
        stack.enter_context(PlainForwarding(tb, h1, srv1))
        with captures([(srv1, "srv1-eth0")], tmp_path / "pcap") as pcaps, ike_agents(
                h1, srv1, EXAMPLES / "ike-esp-transport-h1.toml", EXAMPLES / "ike-esp-transport-srv1.toml",
                tmp_path) as (initiator, responder):
            body = fetch_marker(h1, srv1, www)
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
    with captures([(srv1, "srv1-eth0")], tmp_path / "pcap") as pcaps, ike_agents(
            h1, srv1, EXAMPLES / "ike-esp-transport-nat-h1.toml", EXAMPLES / "ike-esp-transport-nat-srv1.toml",
            tmp_path) as (initiator, responder):
        status = wait_for_child(initiator)
        table = tb.table()
        body = fetch_marker(h1, srv1, www)
    assert body.encode().strip() == marker * 200, initiator.log_tail()
    inbound = [s for s in status["sas"] if s["direction"] == "inbound"]
    entries = [e for e in table["entries"] if e["kind"] == "CLIENT-ALG"]
    leased_spis = {e["global_gpn"] for e in entries if e["protocol"] == 50}
    assert inbound and all(int(s["spi"], 16) in leased_spis for s in inbound), (status["sas"], entries)
    ike_entries = [e for e in entries if space_of_record(e) == ISAKMP_KEY]
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


def with_pfs(example: str, folder: Path, extra: str = "") -> Path:
    """An example config whose CHILD_SAs are rekeyed with PFS (ECP-256, RFC 7296 1.3.1), plus ``extra`` lines."""
    config = folder / example
    config.write_text((EXAMPLES / example).read_text().replace('esp = ["aes128gcm16"]', 'esp = ["aes128gcm16-ecp256"]')
                      .replace('mode = "transport"', 'mode = "transport"' + extra))
    return config


def test_child_sa_rekeyed_under_iperf3_through_the_nat_keeps_the_connection(make_testbed, tmp_path: Path) -> None:
    """CHILD_SA lifetime of 3 s, IKE SA lifetime of 4 s, iperf3 TCP for 10 s across: several CHILD_SA rekeys,
    each with PFS (a fresh ECP-256 exchange), and IKE SA rekeys (RFC 7296 2.18) whose new SPIi is a spare
    leased ahead (step 801 again: the NAT demultiplexes IKE on it); the connection survives; each new inbound
    SPI was leased before it was proposed, each old one released (step 802 both ways), and so was each old SPIi."""
    from conformance import apps

    tb = make_testbed(clients=1, servers=1, globals=1)
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    h1_config = with_pfs("ike-esp-transport-nat-h1.toml", tmp_path, "\nchild_rekey = 3\nike_rekey = 4")
    with ike_agents(h1, srv1, h1_config, with_pfs("ike-esp-transport-nat-srv1.toml", tmp_path),
                    tmp_path) as (initiator, responder):
        with apps.iperf3_server(srv1):
            tcp = apps.iperf3(h1, SRV1, seconds=10)
        table = tb.table()
    status = json.loads((initiator.run_dir / "status.json").read_text())
    log = initiator.log.read_text()
    assert "error" not in tcp and tcp["received"] > 1_000_000, tcp
    assert status["ike"]["events"]["ChildEstablished"] >= 3, status["ike"]
    released = re.findall(r"CHILD SPI 0x([0-9a-f]{8}) released, 0x([0-9a-f]{8}) being leased", log)
    assert len(released) >= 2, log[-3000:]
    pfs = re.findall(r'"event": "ChildEstablished".*"pfs": (\w+)', log)
    assert pfs[0] == "null" and len(pfs) >= 3 and set(pfs[1:]) == {"19"}, pfs  # IKE_AUTH's has none, rekeys do
    assert status["leases"]["counters"].get("retired", 0) >= 2, status["leases"]
    esp = {e["global_gpn"] for e in table["entries"] if e["kind"] == "CLIENT-ALG" and e["protocol"] == 50}
    assert not esp & {int(old, 16) for old, _ in released[:-1]}, (esp, released)  # released leases are gone
    assert_ike_sa_rekeyed_with_leased_spis(log, status, table)
    print(f"rekeys under iperf3: {len(released)}; TCP {tcp['bps'] / 1e6:.0f} Mbit/s; "
          f"drops {status['counters']['drops']}")


def assert_ike_sa_rekeyed_with_leased_spis(log: str, status: dict, table: dict) -> None:
    """Each IKE SA rekey took the spare SPIi (then leasing the next spare) and gave the old SPIi back; the
    NAT's table holds the SPIi in use and the spare, and none of the released ones."""
    taken = re.findall(r"IKE SPI 0x([0-9a-f]{16}) taken for a rekey, 0x([0-9a-f]{16}) being leased", log)
    gone = re.findall(r"IKE SPI 0x([0-9a-f]{16}) released \(its IKE SA was rekeyed\)", log)
    assert taken and len(gone) >= len(taken) - 1 and status["ike"]["events"].get("IkeRekeyed", 0) >= len(taken), (
        taken, gone, status["ike"])
    assert re.search(r'"event": "IkeClosed", "reason": "rekeyed"', log), log[-3000:]
    isakmp = {e["global_gpn"] for e in table["entries"] if e["kind"] == "CLIENT-ALG" and space_of_record(e) == ISAKMP_KEY}
    assert {int(taken[-1][0], 16), int(taken[-1][1], 16)} <= isakmp, (isakmp, taken)
    assert not isakmp & {int(spi, 16) for spi in gone}, (isakmp, gone)
