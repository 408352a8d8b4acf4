"""The IPsec agents on the live testbed, no NAT in the way: unmodified ping, curl and iperf3 over ESP and AH.

r1 forwards as a plain L2 switch (conformance.bench.PlainForwarding). Agents
run in h1 and srv1 (transport mode) or h1 and sgw1 (tunnel mode, to ih1 in the
intranet behind sgw1), with the example configs or configs made on the fly.
A capture on the far peer's wire must show only ESP/AH between the peers and
never the payload; tshark, given the agent's own key file, must find every
ESP ICV good and every inner TCP/UDP checksum right. When the agents stop,
nothing of theirs may be left in the hosts.
"""

from __future__ import annotations

import secrets
from contextlib import ExitStack
from pathlib import Path

import pytest

from client_agent.agent_cli import AgentProcess
from client_agent.agent_config import Peer, examples, load, peer_pair
from client_agent.ipsec.suites import suite
from conformance import apps
from conformance.bench import PlainForwarding
from conformance.evidence import captures, read_pcap
from conformance.oracles import tshark_summary, tshark_verdicts
from netwire.plan import INTRANET_HOST_IP, SGW_OUTSIDE_IP, client_ip, server_ip

EXAMPLES = examples()
H1, SRV1 = client_ip(1), server_ip(1)


def start_agents(stack: ExitStack, tmp_path: Path, *sides: tuple) -> list[AgentProcess]:
    """One agent per (host, config) side, each stopped when ``stack`` closes."""
    return [stack.enter_context(AgentProcess(host, config, tmp_path / f"agent-{host.name}")) for host, config in sides]


def web_root(tmp_path: Path) -> tuple[Path, bytes]:
    """A folder for http.server holding one file whose body is a random marker."""
    marker = f"natlab-secret-{secrets.token_hex(8)}".encode()
    root = tmp_path / "www"
    root.mkdir()
    (root / "secret.txt").write_bytes(marker * 200)  # 6 KB: several full-size TCP segments
    return root, marker


UDP_PORT = 5202  # the second iperf3 server's port (the first listens on iperf3's 5201)


def exercise(client, server, server_ip: str, www: Path, marker: bytes) -> None:
    """Unmodified tools from ``client`` to ``server``: ping, curl of the marker file, iperf3 TCP and UDP.
    TCP and UDP go to two iperf3 servers: one server still closing the TCP test answers the next
    client "the server is busy running a test" (seen on a loaded machine)."""
    serve = [apps.sys.executable, "-m", "http.server", "8000", "--bind", server_ip, "--directory", str(www)]
    with apps.Service(server, serve, settle=0.8), apps.iperf3_server(server), apps.iperf3_server(server, UDP_PORT):
        assert apps.ping(client, server_ip) == (3, 3)
        body = client.cmd(f"curl -s --max-time 10 http://{server_ip}:8000/secret.txt")
        assert body.encode().strip() == marker * 200
        tcp = apps.iperf3(client, server_ip, seconds=1)
        assert tcp["received"] > 1_000_000, tcp
        udp = apps.iperf3(client, server_ip, UDP_PORT, seconds=1, udp_rate="20M")
        assert udp["received"] > 200, udp  # 20 Mbit/s for 1 s: 1,700 packets of 1.4 KB, 280 of 9 KB


def assert_only_ipsec_between(pcap: Path, a: str, b: str, protocol: int, marker: bytes) -> int:
    """Every IPv4 packet between ``a`` and ``b`` is ESP (50) or AH (51) and the marker appears nowhere."""
    between = [p for p in read_pcap(pcap) if {p.src, p.dst} == {a, b}]
    assert between, f"nothing between {a} and {b} in {pcap}"
    assert {p.proto for p in between} == {protocol}, sorted({p.proto for p in between})
    if protocol == 50:
        assert marker not in pcap.read_bytes(), "the payload crossed the wire in clear"
    return len(between)


def assert_tshark_verifies(pcap: Path, keyfile_dir: Path, esp: bool) -> None:
    summary = tshark_summary(tshark_verdicts(pcap, keyfile_dir))
    if esp:
        assert summary.esp_icv_good and not summary.esp_icv_bad, summary
    bad = summary.tcp_checksum_bad + summary.udp_checksum_bad + summary.checksum_unverified
    assert summary.tcp_checksum_good + summary.udp_checksum_good > 100 and not bad, summary


def assert_clean_exit(agents: list[AgentProcess]) -> None:
    """Exit status 0, no drops, the exercise's traffic carried, and neither the TUN device, nor the rule,
    nor the routes left behind. The bulk (iperf3) goes from the first agent to the second: thousands of
    packets; the way back carries replies and ACKs, whose number falls with the MTU (a 9000-byte TUN
    sends a sixth of the segments, so about a sixth of the ACKs), hence the smaller floor."""
    (client, server) = agents
    counters: dict[AgentProcess, dict] = {}
    for agent in agents:
        assert agent.stop() == 0, agent.log_tail()
        status = agent.status()
        assert status["state"] == "stopped" and status["counters"]["drops"] == {}, status["counters"]
        counters[agent] = status["counters"]
    assert counters[client]["protected"] > 1000 and counters[server]["delivered"] > 1000, counters
    assert counters[server]["protected"] > 100 and counters[client]["delivered"] > 100, counters
    for agent in agents:
        host = agent.host
        assert "ipsec0" not in host.cmd("ip -o link"), f"TUN device left in {host.name}"
        assert "fwmark" not in host.cmd("ip rule"), f"rule left in {host.name}"
        assert host.cmd("ip route show table 100").strip() == "", f"routes left in {host.name}"


@pytest.mark.parametrize("kind", ["esp-transport", "ah-transport"])
def test_transport_mode_between_h1_and_srv1(make_testbed, tmp_path: Path, kind: str) -> None:
    tb = make_testbed(clients=1, servers=1, globals=1)
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    www, marker = web_root(tmp_path)
    esp = kind.startswith("esp")
    rp_filter = srv1.cmd("sysctl -n net.ipv4.conf.all.rp_filter").strip()
    with ExitStack() as stack:
        stack.enter_context(PlainForwarding(tb, h1, srv1))
        agents = start_agents(stack, tmp_path, (h1, EXAMPLES / f"{kind}-h1.toml"), (srv1, EXAMPLES / f"{kind}-srv1.toml"))
        with captures([(srv1, "srv1-eth0")], tmp_path / "pcap") as pcaps:
            exercise(h1, srv1, SRV1, www, marker)
        assert_clean_exit(agents)
    assert_only_ipsec_between(pcaps["srv1-eth0"], H1, SRV1, 50 if esp else 51, marker)
    assert_tshark_verifies(pcaps["srv1-eth0"], agents[1].run_dir, esp)
    assert srv1.cmd("sysctl -n net.ipv4.conf.all.rp_filter").strip() == rp_filter


@pytest.mark.parametrize("kind", ["esp", "ah"])
def test_tunnel_mode_from_h1_to_ih1_through_sgw1(make_testbed, tmp_path: Path, kind: str) -> None:
    tb = make_testbed(clients=1, servers=1, globals=1)
    h1, sgw1, ih1 = tb.host("h1"), tb.host("sgw1"), tb.host("ih1")
    www, marker = web_root(tmp_path)
    if kind == "esp":
        configs = load(EXAMPLES / "esp-tunnel-h1.toml"), load(EXAMPLES / "esp-tunnel-sgw1.toml")
    else:
        configs = peer_pair(suite("ah:HMAC_SHA1_96"), Peer("h1", H1), Peer("sgw1", SGW_OUTSIDE_IP, "172.16.0.0/24"),
                            mode="tunnel", spis=(0x4001, 0x4002))
    with ExitStack() as stack:
        stack.enter_context(PlainForwarding(tb, h1, sgw1))  # on-link routes h1 <-> sgw1 for the outer packets
        agents = start_agents(stack, tmp_path, (h1, configs[0]), (sgw1, configs[1]))
        with captures([(sgw1, "sgw1-eth0"), (sgw1, "sgw1-eth1")], tmp_path / "pcap") as pcaps:
            exercise(h1, ih1, INTRANET_HOST_IP, www, marker)
        assert_clean_exit(agents)
    outside = assert_only_ipsec_between(pcaps["sgw1-eth0"], H1, SGW_OUTSIDE_IP, 50 if kind == "esp" else 51, marker)
    inside = [p for p in read_pcap(pcaps["sgw1-eth1"]) if {p.src, p.dst} == {H1, INTRANET_HOST_IP}]
    assert {p.proto for p in inside} == {1, 6, 17} and not any(p.checksum_bad for p in inside)
    assert len(inside) >= outside * 0.9  # what went through the tunnel is what reached the intranet
    assert_tshark_verifies(pcaps["sgw1-eth0"], agents[1].run_dir, kind == "esp")


def test_a_tun_mtu_above_the_link_sends_esp_in_fragments(make_testbed, tmp_path: Path) -> None:
    """A 9000-byte TUN MTU: the agent fragments after ESP (RFC 4303 section 3.3.4), srv1's kernel reassembles."""
    tb = make_testbed(clients=1, servers=1, globals=1)
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    www, marker = web_root(tmp_path)
    configs = peer_pair(suite("esp:AES_GCM_16-128:NONE"), Peer("h1", H1), Peer("srv1", SRV1), mtu=9000)
    with ExitStack() as stack:
        stack.enter_context(PlainForwarding(tb, h1, srv1))
        agents = start_agents(stack, tmp_path, (h1, configs[0]), (srv1, configs[1]))
        with captures([(srv1, "srv1-eth0")], tmp_path / "pcap") as pcaps:
            exercise(h1, srv1, SRV1, www, marker)
        assert_clean_exit(agents)
    fragments = srv1.cmd(f"tcpdump -n -r {pcaps['srv1-eth0']} 'ip[6:2] & 0x3fff != 0' 2>/dev/null | wc -l")
    assert int(fragments) > 1000
    assert_only_ipsec_between(pcaps["srv1-eth0"], H1, SRV1, 50, marker)
    assert_tshark_verifies(pcaps["srv1-eth0"], agents[1].run_dir, esp=True)
