"""Real FTP across the NAT (issue 13): pyftpdlib on the far end; curl, ftplib and Debian's ``ftp`` on three clients.

Inside IPsec (the client's FTP ALG, steps 813 and 822) and in cleartext (the
NAT's own FTP ALG, NAT-AUTO), three clients behind one global IP at once,
each moving files of several MB both ways, passively and actively. Judges:
SHA-256 at both ends, and pyftpdlib's own log (RFC 2577 checks on: it refuses
a PORT/EPRT naming anything but the control connection's peer, and logs the
address each active data connection went to). The control: with the
client's ALG off, every active transfer inside ESP is refused by the server
for the private address, and every passive one still works.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest

from client_agent.agent_cli import AgentProcess
from conformance import ftp_apps
from conformance.matrix import CELLS, FIRST_PORT, behind_nat, clients
from netwire.ipv4 import IPPROTO_TCP, IPPROTO_UDP
from topo.natlab import global_ips, server_ip

TCP_BLOCK = 40  # each transfer takes a global port (two for a passive session); the quota is 64 leases per client
UDP_BLOCK = 4


def members(count: int = 3, globals_: int = 1):
    """Clients with TCP blocks big enough for the whole plan without waiting for idle ports to be reclaimed."""
    out = []
    for i, c in enumerate(clients(count, globals_)):
        low = FIRST_PORT + i * TCP_BLOCK
        out.append(replace(c, ports=(low, low + TCP_BLOCK - 1)))
    return out


def with_blocks(config, client):
    low = client.ports[0]
    ports = {IPPROTO_TCP: client.ports, IPPROTO_UDP: (low, low + UDP_BLOCK - 1)}
    return replace(config, nat=replace(config.nat, ports=ports))


def run_plans(tb, hosts: list[str], target: str, root: Path, folder: Path, **plan_args) -> list:
    """Every host's plan at the same time; the transfers, once all are done."""
    ftp_apps.make_files(root, folder, hosts)
    plans = {h: ftp_apps.plan(h, **plan_args) for h in hosts}
    procs = [ftp_apps.start(tb.host(h), plans[h], target, folder) for h in hosts]
    for proc in procs:
        proc.wait(timeout=20 * ftp_apps.TIMEOUT_S)
    return [t for h in hosts for t in plans[h]]


def judge_all(transfers, root: Path, folder: Path) -> list[str]:
    return [why for t in transfers if (why := ftp_apps.judge(t, root, folder)) is not None]


def active_data_connections(log: Path, global_ip: str, blocks: dict[str, tuple[int, int]] | None) -> list[dict]:
    rows = ftp_apps.data_connections(log)
    assert rows, f"pyftpdlib logged no PORT/EPRT: {log.read_text()[-2000:]}"
    bad = [r for r in rows if r["code"] != "200" or r["ip"] != global_ip or r["peer"] != global_ip]
    assert not bad, f"data connections refused or to another address: {bad[:5]}"
    if blocks is not None:
        ports = [int(r["port"]) for r in rows]
        assert all(any(lo <= p <= hi for lo, hi in blocks.values()) for p in ports), ports
    return rows


@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
def test_ftp_inside_ipsec_three_clients_behind_one_global_ip_active_and_passive(make_testbed, tmp_path, cell):
    """OUT-ALG/IN-ALG with FTP: the server's log shows every active data connection going to the global IP and
    a port of the client's block, and every file arrives whole, both ways, for every client program and mode."""
    tb = make_testbed(clients=3, servers=1, globals=1)
    group = members()
    configs, peer = behind_nat(cell, group, algs=("ftp",))
    configs = [with_blocks(cfg, c) for cfg, c in zip(configs, group, strict=True)]
    target_host, target = cell.target
    root, folder, log = tmp_path / "ftproot", tmp_path / "clients", tmp_path / "pyftpdlib.log"
    with ExitStack() as stack:
        stack.enter_context(AgentProcess(tb.host(cell.peer), peer, tmp_path / f"agent-{cell.peer}"))
        agents = [stack.enter_context(AgentProcess(tb.host(c.name), cfg, tmp_path / f"agent-{c.name}"))
                  for c, cfg in zip(group, configs, strict=True)]
        root.mkdir()
        stack.enter_context(ftp_apps.ftp_server(tb.host(target_host), target, root, log))
        transfers = run_plans(tb, [c.name for c in group], target, root, folder)
        statuses = [a.refresh() for a in agents]
    failed = judge_all(transfers, root, folder)
    assert not failed, "\n".join(failed)
    rows = active_data_connections(log, group[0].global_ip, {c.name: c.ports for c in group})
    assert len(rows) >= sum(t.active for t in transfers)
    for status in statuses:
        algs = status["nat"]["algs"]
        assert algs.get("ftp:out", 0) > 0 and algs.get("ftp:in", 0) > 0, algs


def test_control_without_the_client_ftp_alg_active_ftp_inside_esp_is_refused_for_the_private_address(
        make_testbed, tmp_path):
    """CTRL-NOALG for FTP: the same plan with the client's FTP ALG off. The server refuses every PORT/EPRT
    naming the private address (RFC 2577), so no active transfer moves a file; every passive one still does."""
    cell = CELLS[0]
    tb = make_testbed(clients=1, servers=1, globals=1)
    group = members(1)
    configs, peer = behind_nat(cell, group, algs=())
    root, folder, log = tmp_path / "ftproot", tmp_path / "clients", tmp_path / "pyftpdlib.log"
    with ExitStack() as stack:
        stack.enter_context(AgentProcess(tb.host(cell.peer), peer, tmp_path / f"agent-{cell.peer}"))
        stack.enter_context(AgentProcess(tb.host("h1"), with_blocks(configs[0], group[0]), tmp_path / "agent-h1"))
        root.mkdir()
        stack.enter_context(ftp_apps.ftp_server(tb.host(cell.target[0]), cell.target[1], root, log))
        transfers = run_plans(tb, ["h1"], cell.target[1], root, folder, programs=("curl", "ftplib"))
    verdicts = {t.key: ftp_apps.judge(t, root, folder) for t in transfers}
    assert all(verdicts[t.key] is None for t in transfers if not t.active), verdicts
    assert all(verdicts[t.key] is not None for t in transfers if t.active), verdicts
    refused = [r for r in ftp_apps.data_connections(log) if r["code"] == "501"]
    assert refused and {r["ip"] for r in refused} == {group[0].private_ip}, refused


def test_ftp_in_cleartext_three_clients_through_the_nats_own_ftp_alg(make_testbed, tmp_path):
    """NAT-AUTO: no agents, no IPsec; the NAT's own ALG rewrites PORT/EPRT on its slow path and maps the data
    connections onto r1's fast path. pyftpdlib sees the global IP in every PORT/EPRT; every file arrives whole."""
    tb = make_testbed(clients=3, servers=1, globals=1)
    srv1 = server_ip(1)
    root, folder, log = tmp_path / "ftproot", tmp_path / "clients", tmp_path / "pyftpdlib.log"
    root.mkdir()
    with ftp_apps.ftp_server(tb.host("srv1"), srv1, root, log):
        transfers = run_plans(tb, ["h1", "h2", "h3"], srv1, root, folder)
    table = tb.table()
    failed = judge_all(transfers, root, folder)
    assert not failed, "\n".join(failed)
    rows = active_data_connections(log, global_ips(1)[0], None)
    assert len(rows) >= sum(t.active for t in transfers)
    counters = table["counters"]
    assert counters.get("ftp:PORT", 0) + counters.get("ftp:EPRT", 0) >= len(rows), counters
    assert counters.get("ftp:data-mappings", 0) > 0, counters
