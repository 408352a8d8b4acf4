"""Issue 9, parts 3 and 5 (a): a controller restart loses nothing, and r1 never leaks while it is away.

Real parts: OVS's r1 with fail_mode secure, the `natlab controller` process killed with SIGKILL (no
chance to tidy up) and started again on the same state database, unmodified iperf3 and curl, and the
natlab agents of three clients with their ESP leases.
"""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

from client_agent.agent_cli import AgentProcess
from conformance import apps
from conformance.evidence import captures
from conformance.matrix import CELLS, behind_nat, clients
from netwire.plan import server_ip

SRV1, SRV2 = server_ip(1), server_ip(2)
IPERF_S = 12
SLOW_IPERF_S = 20  # the slow path pauses while the controller is away; TCP's RTO backoff doubles that pause
# Paced: the claim is continuity through the restart, not throughput under saturation. Unpaced, the three
# connections saturate both cores (OVS in user space, two Python agents, the slow path), and which IPsec
# connection gets srv1's one agent is luck: in passing runs h3's SA brought srv1 50,000-80,000 packets and
# h2's 2,000-6,000; in CI run 10, which failed here, 612 and 9,242, and h3's connection never moved again
# after the kill (most likely TCP's RTO backed off by so many losses; the run kept no TCP state to prove it).
NAPT_RATE, IPSEC_RATE = "100M", "10M"
KILL_AFTER_S = 3
MAX_STALL_S = 2  # seconds without data that still count as "continues" (one TCP retransmission timeout)
_FIELDS = ("id", "kind", "protocol", "private_ip", "private_gpn", "global_ip", "global_gpn", "foreign", "path")


def entries(tb) -> set[tuple]:
    return {tuple(e[f] for f in _FIELDS) for e in tb.table()["entries"]}


def iperf3_in_background(host, dst: str, port: int, rate: str, seconds: int = IPERF_S) -> subprocess.Popen:
    return host.popen(["iperf3", "-c", dst, "-p", str(port), "-b", rate, "-t", str(seconds), "-i", "1", "-J"],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def interval_bytes(proc: subprocess.Popen) -> list[int]:
    out, _ = proc.communicate(timeout=SLOW_IPERF_S + 30)
    report = json.loads(out[out.index("{"):])
    assert "error" not in report, report["error"]
    return [i["sum"]["bytes"] for i in report["intervals"]]


def longest_stall(per_second: list[int]) -> int:
    """The longest run of seconds in which an iperf3 connection moved nothing."""
    longest = run = 0
    for moved in per_second:
        run = 0 if moved else run + 1
        longest = max(longest, run)
    return longest


def after_the_traffic(tb, folder: Path) -> Path:
    """What a stall needs explained, kept whatever the verdict (CI run 10 saw the slow-path iperf3 stop
    after a restart, once, without this): the controller's counters, r1's and s1's flows, and the TCP
    and checksum counters of both ends (h3's wire is captured in ``pcap/``)."""
    out = folder / "after"
    out.mkdir(exist_ok=True)
    (out / "table.json").write_text(json.dumps(tb.table(), indent=1))
    for switch in ("r1", "s1"):
        flows = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", switch], capture_output=True, text=True)
        (out / f"flows-{switch}.txt").write_text(flows.stdout + flows.stderr)
    for name in ("h3", "srv1"):
        (out / f"{name}-tcp.txt").write_text(tb.host(name).cmd("ss -tin; nstat -asz"))
    return out


def test_a_controller_killed_under_traffic_loses_no_connection_no_lease_no_entry(make_testbed, tmp_path: Path):
    """(a): NAPT iperf3 h1 -> srv2, IPsec iperf3 h2 -> srv1 (alone on its global IP: r1's flows) and
    h3 -> srv1 (sharing one with h1: the controller demultiplexes by SPI) run through a SIGKILL and restart
    of the controller. The first two continue (iperf3 reports no error, moves data to the end and never
    stalls more than MAX_STALL_S: one CI run saw NAPT's TCP move nothing for one second, a retransmission
    timeout's worth, around the restart), the third resumes; the three agents' ESP sessions go
    on, none sees a restart or loses a lease, and `natlab table` shows the same entries before and after."""
    tb = make_testbed(clients=3, servers=2, globals=2)
    cell = CELLS[0]  # ESP transport to srv1
    members = clients(3, 2)
    configs, peer = behind_nat(cell, members, lifetime=600)
    url = f"http://{SRV1}:8000/"
    with ExitStack() as stack:
        stack.enter_context(AgentProcess(tb.host("srv1"), peer, tmp_path / "agent-srv1"))
        agents = [stack.enter_context(AgentProcess(tb.host(c.name), cfg, tmp_path / f"agent-{c.name}"))
                  for c, cfg in zip(members, configs, strict=True)]
        stack.enter_context(apps.http_server(tb.host("srv1"), SRV1))
        stack.enter_context(apps.iperf3_server(tb.host("srv1"), 5201))
        stack.enter_context(apps.iperf3_server(tb.host("srv2"), 5202))
        assert [apps.curl(tb.host(c.name), url) for c in members] == [200, 200, 200]
        napt = iperf3_in_background(tb.host("h1"), SRV2, 5202, NAPT_RATE)
        fast = iperf3_in_background(tb.host("h2"), SRV1, 5201, IPSEC_RATE)
        stack.enter_context(apps.iperf3_server(tb.host("srv1"), 5203))
        stack.enter_context(captures([(tb.host("h3"), "h3-eth0")], tmp_path / "pcap"))
        slow = iperf3_in_background(tb.host("h3"), SRV1, 5203, IPSEC_RATE, SLOW_IPERF_S)
        time.sleep(KILL_AFTER_S)  # both connections established and moving data
        before = entries(tb)
        started = time.monotonic()
        tb.controller.restart(kill=True)
        restart_s = time.monotonic() - started
        after = entries(tb)
        (tmp_path / "h3-tcp-at-restart.txt").write_text(tb.host("h3").cmd("ss -tin"))  # rto, backoff, unacked
        assert after == before, f"lost {before - after}, new {after - before}"
        assert tb.table()["state"].startswith("restored")
        napt_bytes, fast_bytes, slow_bytes = interval_bytes(napt), interval_bytes(fast), interval_bytes(slow)
        evidence = after_the_traffic(tb, tmp_path)
        assert longest_stall(napt_bytes) <= MAX_STALL_S, f"NAPT iperf3 stalled: bytes per second {napt_bytes}"
        assert longest_stall(fast_bytes) <= MAX_STALL_S, f"fast-path IPsec iperf3 stalled: {fast_bytes}"
        assert napt_bytes[-1] > 0 and fast_bytes[-1] > 0, (napt_bytes, fast_bytes)
        assert sum(slow_bytes[-5:]) > 0, f"slow-path IPsec iperf3 did not resume: {slow_bytes}; see {evidence}"
        mbps = {name: [round(b * 8e-6) for b in got] for name, got in
                (("NAPT", napt_bytes), ("IPsec fast path", fast_bytes), ("IPsec slow path", slow_bytes))}
        print(f"\nkill to reconciled {restart_s:.1f} s; {len(before)} entries kept; Mbit/s per second {mbps}")
        assert [apps.curl(tb.host(c.name), url) for c in members] == [200, 200, 200]
        for agent in agents:
            leases = agent.refresh()["leases"]
            assert leases["ready"] and not leases["counters"].get("nat_restarts"), leases
            assert not leases["counters"].get("lost"), leases


def test_r1_leaks_no_private_address_while_the_controller_is_away(make_testbed, tmp_path: Path):
    """fail_mode secure: with the controller killed, new traffic from h1 to srv1 (ping, UDP, TCP: no flow
    in r1 for it) is not switched as plain L2; srv1's capture has no frame with a 10.0.0.x address.
    The twin: the same traffic with the controller back is translated and answered."""
    tb = make_testbed(clients=1, servers=1, globals=1)
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    assert "fail_mode: secure" in subprocess.run(["ovs-vsctl", "show"], capture_output=True, text=True).stdout
    tb.controller.proc.kill()
    tb.controller.proc.wait()
    pcap = tmp_path / "srv1.pcap"
    capture = srv1.popen(["tcpdump", "-i", "srv1-eth0", "-n", "-U", "-w", str(pcap)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)  # tcpdump attached
        sent, received = apps.ping(h1, SRV1, count=10)
        h1.cmd(f"for i in 1 2 3 4 5; do echo leak | nc -u -w1 {SRV1} 9999; done")
        h1.cmd(f"curl -s --max-time 2 http://{SRV1}:8000/ >/dev/null")
    finally:
        capture.terminate()
        capture.wait()
    seen = subprocess.run(["tcpdump", "-n", "-e", "-r", str(pcap)], capture_output=True, text=True).stdout
    assert received == 0 and sent == 10
    assert "10.0.0." not in seen, seen[:2000]
    tb.controller.restart(kill=True)
    assert apps.ping(h1, SRV1, count=3)[1] >= 1
