"""``natlab bench scale``: a benchmark, not a test. How the extensible NAT's cost grows with its clients.

Per step (``--steps 1,8,32,64``) a fresh testbed with two global IPs, where N
clients behind the NAT each run their agent as the conformance suite runs it (:func:`conformance.matrix.behind_nat`: ESP
AES-GCM-128 transport to srv1, each leasing its inbound SPI and 16 TCP and 16
UDP ports, seed FIG. 8 steps 801-805), all launched at once, and srv1 one
NAT-unaware agent for all of them. Measured per step:

- lease grants per second end to end, from the PCP exchanges captured on r1's
  inside port (first request to last grant), and refusals by result code;
- the NAT's table size, the controller's RSS and CPU (while the agents lease,
  and while they send);
- the time from the launch to each client's first ESP packet at srv1's wire
  (tcpdump; scapy reads the SPI), each client poking srv1 as soon as its
  agent runs; and whether srv1's agent accepted it (its SA's packet count);
- aggregate goodput: one iperf3 TCP run of ``--seconds`` from every client at
  once, each to its own iperf3 server on srv1;
- r1's fast path against the controller's slow path (flow counters by
  priority band and the controller's own count), and packet-ins;
- refused clients (an agent exits when its leases are not granted) and lost
  leases (the agents' own count), and client-ALG entries still in the table
  once every agent has released its leases.

Then the sans-IO translation table with ``--table`` entries
(:func:`conformance.bench_nat_core.table_scale`). Prints a table, writes
``bench-scale.json``, ``.txt`` and ``.png`` into ``--out``. Everything it starts
(the testbed, agents, captures, iperf3) is stopped on the way out, Ctrl-C too.
"""

from __future__ import annotations

import argparse
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client_agent.agent_cli import AgentProcess
from conformance.apps import Service
from conformance.bench import save_result
from conformance.bench_e2e import REFUSED_PORT, STATS_S, nat_path
from conformance.bench_ipsec import TICKS, _profile_summary
from conformance.matrix import Cell, Client, behind_nat, clients
from conformance.scale_report import (
    DEFAULT_STEPS,
    Datagram,
    cpu_share,
    first_protected,
    format_profile,
    format_table,
    iperf3_result,
    lease_exchange,
    parse_seconds,
    parse_steps,
    step_row,
)
from netwire.pcp import SERVER_PORT
from netwire.plan import GATEWAY_IP, R1_INSIDE_PORT
from topo.testbed import Testbed, TestbedError

CELL = Cell("esp", "transport")
GLOBALS = 2  # issue 16: the clients share two global IPs
IPERF_BASE = 5201  # srv1 serves client i (0-based) on IPERF_BASE + i
STARTUP_TIMEOUT_S = 120.0  # launch to every agent running; an agent gives up by itself after its lease_timeout
# each agent's lease_timeout (its startup deadline): RFC 6887 8.1.1 retransmits a lost request at about 3, 9 and
# 21 s; with the default 10 s, 44 of 64 agents gave up with 31 of 33 leases granted (two requests lost in the
# packet-in burst and not yet sent a third time)
LEASE_TIMEOUT_S = 30
POLL_S = 0.05
IPERF_CONNECT_MS = 5000  # iperf3 --connect-timeout
IPERF_GRACE_S = 20.0  # after its --seconds, how long an iperf3 client may take to report
POKE_S = 3  # the first protected packet: a TCP connect to srv1's closed port, answered by a RST
CAPTURE_READY_S = 5.0
DRAIN_S = 10.0  # how long the released leases may take to leave the table
OVS_PIDFILE = Path("/var/run/openvswitch/ovs-vswitchd.pid")
# Open vSwitch's own counts of packets it dropped on the way to the controller (coverage/read-counter): a packet-in
# over the controller connection's queue (rconn_overflow), a userspace action (the punt) that failed, the meter.
OVS_DROPS = ("rconn_overflow", "rconn_discarded", "datapath_drop_userspace_action_error", "datapath_drop_meter")
RELEASED = re.compile(r"released (\d+) leases \((\d+) answered\)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=parse_steps, default=DEFAULT_STEPS, metavar="N,N,...",
                   help="client counts, increasing (default 1,8,32,64)")
    p.add_argument("--seconds", type=parse_seconds, default=5.0, help="each step's iperf3 run (default 5)")
    p.add_argument("--table", type=int, default=100_000, help="entries of the sans-IO table figures (0: skip)")
    p.add_argument("--profile", action="store_true", help="run srv1's agent under cProfile in the last step")
    p.add_argument("--out", default="reports", help="where bench-scale.json, .txt and .png go (default reports/)")


def run(args: argparse.Namespace) -> int:
    print(f"natlab bench scale: steps {','.join(map(str, args.steps))} clients behind {GLOBALS} global IPs, "
          f"{args.seconds:g} s of iperf3 per step")
    started = time.monotonic()
    try:
        steps = bench_scale(args.steps, args.seconds, profile=args.profile)
    except (TestbedError, RuntimeError) as exc:
        print(f"natlab bench scale: {exc}", file=sys.stderr)
        return 1
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "seconds": args.seconds,
              "globals": GLOBALS, "suite": CELL.suite.name, "steps": steps,
              "rows": [step_row(s) for s in steps]}
    if args.table > 0:
        result["table"] = _table_scale(args.table)
    result["wall_s"] = round(time.monotonic() - started, 1)
    return _write(result, args.out)


def _table_scale(entries: int) -> dict:
    from conformance.bench_nat_core import table_scale

    print(f"  the sans-IO translation table with {entries:,d} NAPT entries ...")
    return table_scale(entries)


def _write(result: dict, out: str) -> int:
    from conformance.plots import scale_steps

    path = save_result("scale", result, out)
    text = format_table(result["rows"], result["seconds"])
    scale = result.get("table")
    if scale:
        text += (f"\nsans-IO translation table, {scale['entries']:,d} NAPT entries: {scale['bytes_per_entry']:,d} "
                 f"bytes per entry, lookups/s out {scale['lookups_per_second']['out']:,d}, "
                 f"in {scale['lookups_per_second']['in']:,d} (bench_nat_core.table_scale)")
    profiled = result["steps"][-1].get("srv1_profile") if result["steps"] else None
    if profiled:
        text += "\n" + format_profile(f"srv1's agent, {result['steps'][-1]['clients']} clients", profiled)
    text += f"\nin all {result['wall_s']:.0f} s"
    print(text)
    path.with_suffix(".txt").write_text(text + "\n")
    path.with_suffix(".png").write_bytes(scale_steps(result["rows"]))
    print(f"written to {path}, {path.with_suffix('.txt')} and {path.with_suffix('.png')}")
    return 0


def bench_scale(steps: tuple[int, ...], seconds: float, *, profile: bool = False, log=print) -> list[dict]:
    """Each step on a fresh testbed of its size; the raw measurements of each.

    Not one testbed for all: releases the controller never saw (OVS dropped their packet-ins) leave leases
    that live out their lifetime (120 s at least), and the next step's agents, on the same addresses with
    new nonces, met them as NOT_AUTHORIZED (measured: 298 refusals at 64 clients after a 32-client step).
    """
    raws = []
    with tempfile.TemporaryDirectory(prefix="natlab-bench-scale-") as tmp:
        for n in steps:
            began = time.monotonic()
            with Testbed(clients=n, servers=1, globals=GLOBALS) as tb:
                log(f"  testbed with {n} clients up in {time.monotonic() - began:.0f} s (a queue for the lock included)")
                raw = run_step(tb, n, seconds, Path(tmp) / f"step-{n}", profile=profile and n == steps[-1])
            row = step_row(raw)
            log(f"  {n} clients ({time.monotonic() - began:.0f} s): {row['leases_per_s']:.0f} leases/s, "
                f"{row['table_entries']} entries, goodput {row['goodput_mbit']:.0f} Mbit/s, fast path "
                f"{row['fast_share'] if row['fast_share'] is not None else '-'}, refused {row['refused']}, "
                f"lost {row['lost']}, unprotected {row['unprotected']}")
            raws.append(raw)
    return raws


def run_step(tb: Testbed, n: int, seconds: float, work: Path, *, profile: bool = False) -> dict[str, Any]:
    """N agents launched at once, a poke each, iperf3 from all, then every agent stopped (leases released)."""
    members = clients(n, GLOBALS)
    configs, peer = behind_nat(CELL, members)
    configs = [replace(c, nat=replace(c.nat, lease_timeout=LEASE_TIMEOUT_S)) if c.nat else c for c in configs]
    srv1 = tb.host(CELL.peer)
    extra = ("--profile", str(work / "srv1.prof")) if profile else ()
    with ExitStack() as stack:
        peer_agent = stack.enter_context(AgentProcess(srv1, peer, work / "srv1", *extra))
        stack.enter_context(_iperf3_servers(srv1, n))
        agents = [AgentProcess(tb.host(c.name), cfg, work / c.name) for c, cfg in zip(members, configs, strict=True)]
        stack.callback(stop_all, agents)
        raw: dict[str, Any] = {"clients": n, **start_up(tb, agents, members, work)}
        raw["accepted_by_peer"] = _accepted(peer_agent.refresh(), members)
        raw.update(traffic(tb, agents, members, seconds, peer_agent))
        raw["agents"] = {a.host.name: _lease_counters(a.status()) for a in agents}
        drops = ovs_drops()
        stop_all(agents)
        raw["releases"] = _releases(agents)
        raw["leftover"], raw["release_drain_s"], raw["left_by_client"] = _drain(tb)
        raw["ovs_drops_release"] = ovs_drops(since=drops)
    if profile:  # written by the agent as it stopped
        raw["srv1_profile"] = _profile_summary(work / "srv1.prof")
    return raw


def start_up(tb: Testbed, agents: list[AgentProcess], members: list[Client], work: Path) -> dict[str, Any]:
    """Launch every agent at once; each pokes srv1 as soon as it runs. PCP and ESP captured meanwhile."""
    controller = _controller_pid(tb)
    pokes: list[subprocess.Popen] = []
    with Capture(subprocess.Popen, f"r1-eth{R1_INSIDE_PORT}", f"udp port {SERVER_PORT}", work / "pcp.pcap") as pcp, \
            Capture(tb.host(CELL.peer).popen, f"{CELL.peer}-eth0", "esp", work / "esp.pcap", snaplen=96) as esp:
        before, drops = usage(controller), ovs_drops()
        t0 = time.time()
        try:
            launch = launch_all(agents, lambda a: pokes.append(_poke(a.host)))
            after = usage(controller)
            for p in pokes:
                p.wait(timeout=POKE_S + 5)
        finally:
            _reap(pokes)
    table = tb.table()
    return {"t0": t0, "launch": launch, "table": _table_size(table), "ovs_drops_start": ovs_drops(since=drops),
            "leases": {**lease_exchange(read_pcp(pcp.path), GATEWAY_IP), "capture_dropped": pcp.dropped},
            "first_protected": first_protected(read_esp(esp.path), {c.spi_out: c.name for c in members}, t0),
            "esp_capture_dropped": esp.dropped,
            "controller": {"rss_kib": after["rss_kib"], "hwm_kib": after["hwm_kib"],
                           "cpu_leases": cpu_share(before, after)}}


def launch_all(agents: list[AgentProcess], on_running: Callable[[AgentProcess], object],
               timeout: float = STARTUP_TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """Launch every agent, then watch them all: seconds until each ran, or why it did not."""
    t0 = time.monotonic()
    for agent in agents:
        agent.launch()
    waiting = {a.host.name: a for a in agents}
    running: dict[str, float] = {}
    failed: dict[str, str] = {}
    while waiting and time.monotonic() < t0 + timeout:
        for name, agent in list(waiting.items()):
            try:
                up = agent.poll_running()
            except RuntimeError as exc:
                failed[name] = str(exc)[-400:]
                del waiting[name]
                continue
            if up:
                running[name] = round(time.monotonic() - t0, 3)
                del waiting[name]
                on_running(agent)
        time.sleep(POLL_S)
    failed.update({name: f"not running {timeout:g} s after launch" for name in waiting})
    return {"running": running, "failed": failed}


def traffic(tb: Testbed, agents: list[AgentProcess], members: list[Client], seconds: float,
            peer_agent: AgentProcess) -> dict[str, Any]:
    """iperf3 TCP from every running client at once, each to its own server on srv1; the NAT's paths meanwhile."""
    pids = {"controller": _controller_pid(tb), "ovs": _ovs_pid(), "srv1_agent": _pid(peer_agent)}
    running = [(i, c) for i, (c, a) in enumerate(zip(members, agents, strict=True)) if a.proc is not None]
    time.sleep(STATS_S)  # r1's flow counters, as the controller last read them, include the start-up
    before, cpu_before, drops = tb.table(), {k: usage(p) for k, p in pids.items() if p}, ovs_drops()
    procs = {c.name: tb.host(c.name).popen(["iperf3", "-c", CELL.peer_ip, "-p", str(IPERF_BASE + i),
                                            "-t", f"{seconds:g}", "--connect-timeout", str(IPERF_CONNECT_MS),
                                            "-J"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i, c in running}
    try:
        results = _iperf3_results(procs, time.monotonic() + seconds + IPERF_GRACE_S)
    finally:
        _reap(list(procs.values()))
    cpu_after = {k: usage(p) for k, p in pids.items() if p}
    time.sleep(STATS_S)
    path = nat_path(before, tb.table())
    path.pop("esp_entries", None)
    cpu = {k: cpu_share(cpu_before[k], cpu_after[k]) for k in cpu_after}
    return {"iperf3": results, "path": path, "cpu_traffic": cpu, "ovs_drops_traffic": ovs_drops(since=drops)}


def _iperf3_results(procs: dict[str, subprocess.Popen], deadline: float) -> dict[str, dict[str, Any]]:
    """Each client's iperf3 result; one still running at ``deadline`` is stopped and counted as failed
    (seen at 32 clients: a client whose control connection never got its results back over the slow path)."""
    results = {}
    for name, proc in procs.items():
        try:
            results[name] = iperf3_result(proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))[0])
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            results[name] = {"bps": 0.0, "bytes": 0, "error": f"no result {IPERF_GRACE_S:g} s after its end"}
    return results


# ----------------------------------------------------------------------------- helpers


class Capture:
    """tcpdump of ``intf`` into ``path`` (``popen``: subprocess.Popen in the root namespace, or a host's);
    entering waits until it listens, leaving stops it (SIGINT: it flushes) and keeps its kernel drop count."""

    def __init__(self, popen: Callable[..., Any], intf: str, bpf: str, path: Path, snaplen: int = 0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.dropped: int | None = None
        argv = ["tcpdump", "-i", intf, "-n", "-U", "--immediate-mode", "-Z", "root", "-w", str(path)]
        self.proc = popen(argv + (["-s", str(snaplen)] if snaplen else []) + [bpf],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Capture:
        deadline = time.monotonic() + CAPTURE_READY_S
        while time.monotonic() < deadline:
            if select.select([self.proc.stderr], [], [], 0.1)[0]:
                line = self.proc.stderr.readline()
                if "listening on" in line or not line:
                    break
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            err = self.proc.communicate(timeout=5)[1] or ""
        except subprocess.TimeoutExpired:
            self.proc.kill()
            err = self.proc.communicate()[1] or ""
        match = re.search(r"(\d+) packets? dropped by kernel", err)
        self.dropped = int(match.group(1)) if match else None


def read_pcp(path: Path) -> list[Datagram]:
    """The UDP payloads of a capture, with time and addresses (scapy reads the file)."""
    from scapy.layers.inet import IP, UDP
    from scapy.utils import PcapReader

    with PcapReader(str(path)) as reader:
        return [Datagram(float(p.time), p[IP].src, p[IP].dst, bytes(p[UDP].payload))
                for p in reader if p.haslayer(UDP)]


def read_esp(path: Path) -> list[tuple[float, int]]:
    """(time, SPI) of each ESP packet of a capture (scapy's ESP layer reads the SPI, RFC 4303 2.1)."""
    from scapy.layers.ipsec import ESP
    from scapy.utils import PcapReader

    with PcapReader(str(path)) as reader:
        return [(float(p.time), int(p[ESP].spi)) for p in reader if p.haslayer(ESP)]


@contextmanager
def _iperf3_servers(host: Any, n: int) -> Iterator[None]:
    with ExitStack() as stack:
        for i in range(n):
            stack.enter_context(Service(host, ["iperf3", "-s", "-p", str(IPERF_BASE + i)], settle=0.0))
        time.sleep(0.5)
        yield


def _poke(host: Any) -> subprocess.Popen:
    """One TCP connect to srv1's closed port: its SYN leaves as ESP, srv1's RST comes back as ESP."""
    return host.popen(["timeout", str(POKE_S), "bash", "-c", f"exec 3<>/dev/tcp/{CELL.peer_ip}/{REFUSED_PORT}"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_all(agents: list[AgentProcess]) -> None:
    """SIGTERM to every agent first, then wait for each: they release their leases together."""
    for agent in agents:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.terminate()
    for agent in agents:
        agent.stop()


def _reap(procs: list) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _drain(tb: Testbed) -> tuple[int, float, dict[str, int]]:
    """Client-ALG entries left once every agent released its leases, how long the table took to empty (up to
    :data:`DRAIN_S`: the controller may still be answering the releases), and whose the entries left are."""
    began = time.monotonic()
    while True:
        entries = [e for e in tb.table().get("entries", []) if e.get("kind") == "CLIENT-ALG"]
        if not entries or time.monotonic() - began > DRAIN_S:
            by_client = Counter(str(e.get("private_ip")) for e in entries)
            return len(entries), round(time.monotonic() - began, 2), dict(sorted(by_client.items()))
        time.sleep(0.2)


def _releases(agents: list[AgentProcess]) -> dict[str, int]:
    """What the agents' logs say of their releases (FIG. 8 step 807): sent, and answered within their 1 s."""
    sent = answered = 0
    for agent in agents:
        for match in RELEASED.finditer(agent.log_tail(5)):
            sent, answered = sent + int(match.group(1)), answered + int(match.group(2))
    return {"sent": sent, "answered": answered}


def ovs_drops(since: dict[str, int] | None = None) -> dict[str, int]:
    """Open vSwitch's drop counters (:data:`OVS_DROPS`), or their growth ``since`` an earlier reading."""
    now = {}
    for name in OVS_DROPS:
        out = subprocess.run(["ovs-appctl", "coverage/read-counter", name], capture_output=True, text=True).stdout
        now[name] = int(out.strip()) if out.strip().isdigit() else 0
    return now if since is None else {k: v - since.get(k, 0) for k, v in now.items()}


def _table_size(table: dict) -> dict[str, int]:
    entries = table.get("entries", [])
    return {"entries": len(entries), "client_alg": sum(e.get("kind") == "CLIENT-ALG" for e in entries),
            "slow": sum(e.get("path") == "slow" for e in entries)}


def _accepted(status: dict, members: list[Client]) -> list[str]:
    """Clients whose SA into srv1 carried at least one packet srv1's agent accepted."""
    counts = {int(s["spi"], 16): s["packets"] for s in status.get("sas", []) if s.get("direction") == "inbound"}
    return [c.name for c in members if counts.get(c.spi_out, 0) > 0]


def _lease_counters(status: dict) -> dict[str, int]:
    counters = (status.get("leases") or {}).get("counters", {})
    return {k: int(counters.get(k, 0)) for k in ("granted", "lost", "refused", "renewed", "requested")}


def usage(pid: int) -> dict[str, float]:
    """A process's CPU seconds (proc(5) stat fields 14+15), RSS and peak RSS (status), at a monotonic time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = Path(f"/proc/{pid}/status").read_text()
    kib = {k: int(v) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M)}
    return {"cpu": (int(fields[11]) + int(fields[12])) / TICKS, "wall": time.monotonic(),
            "rss_kib": kib.get("VmRSS", 0), "hwm_kib": kib.get("VmHWM", 0)}


def _controller_pid(tb: Testbed) -> int:
    if tb.controller is None or tb.controller.proc is None:
        raise TestbedError("natlab bench scale needs the extensible NAT's controller")
    return tb.controller.proc.pid


def _ovs_pid() -> int | None:
    try:
        return int(OVS_PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid(agent: AgentProcess) -> int | None:
    return agent.proc.pid if agent.proc is not None else None
