"""``natlab bench e2e``: a benchmark, not a test.

In one run on one testbed, iperf3 TCP h1 -> srv1 over ESP AES-GCM-128 in
transport mode, two ways, alternating (through the NAT, plain, through the
NAT, plain ...) so that drift hits both alike, with fresh keys per run:

- ``nat``: through the extensible NAT; h1's agent has a ``[nat]`` section
  (it leases its global ports and inbound SPI, and compensates), srv1's agent
  is NAT-unaware (:func:`conformance.matrix.behind_nat`). One client alone on
  its global IP: r1 translates its ESP with flows (the fast path);
- ``plain``: no NAT on the path, r1 a plain L2 switch (PlainForwarding), and
  plain peer configs (:func:`client_agent.agent_config.peer_pair`).

Same peers, same suite and the same TUN MTU on every agent (the NAT config's),
so both carry the same packets. Around each run: the agents' CPU time per
packet (from /proc, as ``bench ipsec``), and the NAT's counters: packets r1
matched per priority band (``fast path`` = translation flows, ``bypass`` =
plain L2) and packets the controller translated (the slow path). Then the
sans-IO core without I/O: microseconds per 1400-byte TCP and UDP packet of
compensation (``Traversal.before_protect``/``after_unprotect``, built as the
agent builds it) next to ESP AES-GCM ``encapsulate``/``decapsulate``, and
compensation's share of the core's per-packet work each way. Prints a table;
writes ``bench-e2e.json`` and the same table as ``bench-e2e.txt``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from client_agent.agent import traversal_of
from client_agent.agent_cli import AgentProcess
from client_agent.agent_config import INBOUND, OUTBOUND, AgentConfig, Peer, peer_pair
from client_agent.ipsec.processing import decapsulate, encapsulate
from client_agent.ipsec.sa import SAState
from client_agent.ipsec.sad import SAD
from client_agent.traversal import Traversal
from conformance import apps
from conformance.bench import PlainForwarding, save_result
from conformance.bench_ipsec import agent_costs, cpu_times, median_cpu
from conformance.matrix import SUITES, Cell, behind_nat, clients
from netwire.checksum import internet_checksum, ip_bytes, pseudo_header_sum
from netwire.ipv4 import IPPROTO_ESP, IPPROTO_TCP, IPPROTO_UDP, build_ipv4_header, build_udp
from netwire.plan import client_ip, server_ip
from topo.testbed import Testbed, TestbedError

CELL = Cell("esp", "transport")  # suite SUITES["esp"]: esp:AES_GCM_16-128:NONE
NAT, PLAIN = "nat", "plain"
MODES = (NAT, PLAIN)  # the order of each round
STATS_S = 2.5  # the controller reads r1's flow counters every 2 s: wait for a reading taken after now
IPERF_PORT = 5201
REFUSED_PORT = 9  # discard: nothing listens in srv1, so it answers a SYN with a RST
CORE_SIZE = 1400
CORE_REPEAT = 9  # timeit repetitions; the minimum is reported (timeit's advice: the rest is noise)
CORE_BATCH = 512  # decapsulate needs fresh sequence numbers: one batch through a fresh SAD per call
PRIVATE_PORT = 45000  # h1's ephemeral port in the core's packets; the NAT config binds it to a leased port


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=5, help="length of each iperf3 run (default 5)")
    p.add_argument("--repeat", type=int, default=3, help="NAT/plain pairs of iperf3 runs, alternating (default 3)")
    p.add_argument("--out", default="reports", help="where bench-e2e.json and .txt go (default reports/)")


def run(args: argparse.Namespace) -> int:
    print(f"natlab bench e2e: {args.repeat} x {args.seconds:.0f} s iperf3 TCP h1 -> srv1 over ESP AES-GCM-128 "
          "transport, alternating through the extensible NAT and plain forwarding")
    try:
        result = bench_e2e(args.seconds, args.repeat)
    except (TestbedError, RuntimeError) as exc:
        print(f"natlab bench e2e: {exc}", file=sys.stderr)
        return 1
    path = save_result("e2e", result, args.out)
    table = format_tables(result)
    path.with_suffix(".txt").write_text(table + "\n")
    print(table)
    print(f"written to {path} and {path.with_suffix('.txt')}")
    return 0


def configs(random: Callable[[int], bytes] = os.urandom) -> dict[str, tuple[AgentConfig, AgentConfig]]:
    """(h1's config, srv1's config) per mode, with fresh keys and the NAT client's TUN MTU on all four."""
    (client,), peer = behind_nat(CELL, clients(1, 1), random=random)
    mtu = client.tun_mtu()
    plain = peer_pair(CELL.suite, Peer("h1", client_ip(1)), Peer("srv1", server_ip(1)), random=random, mtu=mtu)
    return {NAT: (replace(client, mtu=mtu), replace(peer, mtu=mtu)), PLAIN: plain}


def bench_e2e(seconds: float, repeat: int, *, log=print) -> dict:
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="natlab-bench-e2e-") as tmp, \
            Testbed(clients=1, servers=1, globals=1) as tb:
        work = Path(tmp)
        with apps.iperf3_server(tb.host("srv1"), IPERF_PORT):
            for r in range(1, repeat + 1):
                for mode in MODES:
                    runs[mode].append(_iperf3_run(tb, mode, seconds, work / f"r{r}-{mode}"))
                nat, plain = runs[NAT][-1], runs[PLAIN][-1]
                log(f"  round {r}/{repeat}: through the NAT {nat['bps'] / 1e6:.0f} Mbit/s "
                    f"(r1 fast path {nat['nat_path']['fast_path']}, slow path {nat['nat_path']['slow_path']} pkts), "
                    f"plain {plain['bps'] / 1e6:.0f} Mbit/s, ratio {nat['bps'] / max(plain['bps'], 1):.2f}")
        # Still holding the testbed (now idle), so that no other testbed shares the CPUs meanwhile.
        log("  timing compensation and ESP in the sans-IO core ...")
        core = [core_figures(protocol) for protocol in (IPPROTO_TCP, IPPROTO_UDP)]
    median = {m: statistics.median(x["bps"] for x in runs[m]) for m in MODES}
    ratios = [a["bps"] / b["bps"] if b["bps"] else 0.0 for a, b in zip(runs[NAT], runs[PLAIN], strict=True)]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "suite": SUITES[CELL.protocol],
        "mode": CELL.mode,
        "tun_mtu": configs()[NAT][0].mtu,
        "paths": {
            NAT: f"{client_ip(1)} -> s1 -> r1 (extensible NAT, {clients(1, 1)[0].global_ip}) -> s2 -> {server_ip(1)}; "
                 "h1 agent with [nat] (leases, compensation), srv1 agent NAT-unaware",
            PLAIN: f"{client_ip(1)} -> s1 -> r1 (plain L2, bypass flows) -> s2 -> {server_ip(1)}; plain peer configs",
        },
        "order": "alternating, " + ", ".join(MODES) + " per round, fresh keys and agents per run",
        "iperf3_tcp": runs,
        "median_bps": median,
        "ratio_nat_to_plain": {"per_round": [round(x, 3) for x in ratios],
                               "of_medians": median[NAT] / median[PLAIN] if median[PLAIN] else 0.0,
                               "median_of_rounds": statistics.median(ratios)},
        "agent_cpu_us_per_packet": {m: median_cpu(runs[m]) for m in MODES},
        "core": core,
        "h1_compensation_us_per_packet": compensation_in_the_agent(runs, core),
    }


def compensation_in_the_agent(runs: dict[str, list[dict]], core: list[dict]) -> dict[str, float]:
    """The h1 agent's extra user CPU per packet through the NAT, next to the core's compensation at the same mix.

    The mix: the NAT runs' compensated outbound and inbound packets (TCP: data
    out, ACKs in), each costed at the core's TCP ``before_protect`` and
    ``after_unprotect``.
    """
    tcp = next(row["us_per_packet"] for row in core if row["protocol"] == "tcp")
    out = sum(r.get("compensated", {}).get("compensated_out", 0) for r in runs[NAT])
    into = sum(r.get("compensated", {}).get("compensated_in", 0) for r in runs[NAT])
    user = {m: statistics.median(r["cpu_us_per_packet"]["h1"]["user"] for r in runs[m]) for m in MODES}
    core_us = (out * tcp["before_protect"] + into * tcp["after_unprotect"]) / max(out + into, 1)
    return {"agent_extra_user": round(user[NAT] - user[PLAIN], 1), "core": round(core_us, 1)}


def _iperf3_run(tb: Testbed, mode: str, seconds: float, work: Path) -> dict:
    """One iperf3 run in ``mode`` with fresh agents (srv1's first, as the peer must be up to answer)."""
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    h1_config, srv1_config = configs()[mode]
    with ExitStack() as stack:
        if mode == PLAIN:
            stack.enter_context(PlainForwarding(tb, h1, srv1))
        receiver = stack.enter_context(AgentProcess(srv1, srv1_config, work / "srv1"))
        sender = stack.enter_context(AgentProcess(h1, h1_config, work / "h1"))
        warm_up(h1)
        time.sleep(STATS_S)
        before = tb.table()
        cpu_before = [cpu_times(a) for a in (sender, receiver)]
        tcp = apps.iperf3(h1, server_ip(1), IPERF_PORT, seconds=seconds)
        cpu_after = [cpu_times(a) for a in (sender, receiver)]
        time.sleep(STATS_S)
        after = tb.table()
        if "error" in tcp:
            raise RuntimeError(f"iperf3 {mode}: {tcp['error']}")
    nat_status = sender.status().get("nat")
    return {"bps": tcp["bps"], **agent_costs((sender, receiver), cpu_before, cpu_after),
            "nat_path": nat_path(before, after), "compensated": (nat_status or {}).get("counters", {})}


def warm_up(h1) -> None:
    """ARP, and in r1 the ESP flows, before the timed run: one TCP connection attempt, refused by srv1.

    Not a ping: srv1's NAT-unaware policy selects the traffic to the client by
    its leased ports, so an ICMP echo reply would be discarded there.
    """
    h1.cmd(f"timeout 3 bash -c 'exec 3<>/dev/tcp/{server_ip(1)}/{REFUSED_PORT}' 2>/dev/null")


def nat_path(before: dict, after: dict) -> dict:
    """What the NAT did between two ``natlab table`` snapshots: packets per path, and the ESP entries' paths.

    ``fast_path``: packets r1's translation flows matched; ``slow_path``: packets
    the controller translated one by one; ``bypass``: packets r1 switched as a
    plain L2 switch; ``to_controller``: packet-ins (table miss and punts).
    """
    def band(name: str) -> int:
        return after.get("switch_packets", {}).get(name, 0) - before.get("switch_packets", {}).get(name, 0)

    def counter(name: str) -> int:
        return after.get("counters", {}).get(name, 0) - before.get("counters", {}).get(name, 0)

    return {
        "fast_path": band("fast path"),
        "slow_path": counter("slow_path_packets"),
        "bypass": band("bypass"),
        "to_controller": counter("packet_in"),
        "esp_entries": sorted(e["path"] for e in after.get("entries", []) if e.get("protocol") == IPPROTO_ESP),
    }



# ----------------------------------------------------------------------------- the sans-IO core


def tcp_packet(src: str, dst: str, sport: int, dport: int, size: int) -> bytes:
    """A ``size``-byte IPv4/TCP packet (20-byte header, ACK|PSH) with both checksums right."""
    payload = bytes(size - 40)
    header = bytearray(sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + (1).to_bytes(4, "big")
                       + (1).to_bytes(4, "big") + bytes([5 << 4, 0x18]) + (65535).to_bytes(2, "big") + bytes(4))
    csum = internet_checksum(bytes(header) + payload,
                             pseudo_header_sum(ip_bytes(src), ip_bytes(dst), IPPROTO_TCP, len(header) + len(payload)))
    header[16:18] = csum.to_bytes(2, "big")
    return build_ipv4_header(src=src, dst=dst, protocol=IPPROTO_TCP, payload_len=size - 20) + bytes(header) + payload


def transport_packet(protocol: int, src: str, dst: str, sport: int, dport: int, size: int) -> bytes:
    if protocol == IPPROTO_TCP:
        return tcp_packet(src, dst, sport, dport, size)
    return build_udp(src, dst, sport, dport, bytes(size - 28))


def with_destination(packet: bytes, dst: str) -> bytes:
    """``packet`` with its IPv4 destination rewritten and the header checksum redone, as a NAT rewrites it."""
    header = bytearray(packet[:20])
    header[16:20], header[10:12] = ip_bytes(dst), bytes(2)
    header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + packet[20:]


def checksum_ok(packet: bytes | bytearray, src: str, dst: str) -> bool:
    """Does the TCP/UDP checksum of ``packet`` verify over a pseudo-header of ``src`` and ``dst``?"""
    segment = bytes(packet[(packet[0] & 0x0F) * 4:])
    return internet_checksum(segment, pseudo_header_sum(ip_bytes(src), ip_bytes(dst), packet[9], len(segment))) == 0


def core_figures(protocol: int, size: int = CORE_SIZE, *, budget: float = 0.05) -> dict:
    """Microseconds per ``size``-byte packet of ``protocol``: compensation and ESP AES-GCM, each way.

    Outbound: ``before_protect`` of h1's cleartext packet (private source port),
    then ``encapsulate``. Inbound: ``decapsulate`` of srv1's ESP packet to the
    global IP and port, then ``after_unprotect``. Each figure is the best of
    :data:`CORE_REPEAT` timeit runs of about ``budget`` seconds.
    """
    (client,), peer = behind_nat(CELL, clients(1, 1))
    traversal: Traversal = traversal_of(client)  # as the agent builds it: the configured ALGs registered
    sent, received = SAState(_sa(client, OUTBOUND)), SAState(_sa(client, INBOUND))
    inbound_sa, peer_sends = received.sa, SAState(_sa(peer, OUTBOUND))
    nat, private_ip = client.behind_nat()
    global_ip = nat.global_ip
    private = transport_packet(protocol, private_ip, server_ip(1), PRIVATE_PORT, IPERF_PORT, size)
    compensated = traversal.before_protect(private, sent)  # binds PRIVATE_PORT to the first leased port
    global_port = int.from_bytes(compensated[20:22], "big")
    # srv1 sends to the global IP and port; the NAT rewrites the (outer = only) header's destination.
    from_srv1 = transport_packet(protocol, server_ip(1), global_ip, IPERF_PORT, global_port, size)
    arriving = with_destination(from_srv1, private_ip)
    batch = [encapsulate(from_srv1, peer_sends) for _ in range(CORE_BATCH)]
    restored = traversal.after_unprotect(arriving, received)
    if not (checksum_ok(compensated, global_ip, server_ip(1)) and checksum_ok(restored, server_ip(1), private_ip)
            and int.from_bytes(restored[22:24], "big") == PRIVATE_PORT):
        raise RuntimeError("compensation did not give the packets the far end and our stack expect")

    def decapsulate_batch() -> None:
        sad = SAD()
        sad.add_inbound(inbound_sa)
        for wire in batch:
            decapsulate(wire, sad, icv_dst=traversal.icv_dst)

    us = {
        "before_protect": _us_per_call(lambda: traversal.before_protect(private, sent), budget),
        "encapsulate": _us_per_call(lambda: encapsulate(compensated, sent), budget),
        "decapsulate": _us_per_call(decapsulate_batch, budget) / CORE_BATCH,
        "after_unprotect": _us_per_call(lambda: traversal.after_unprotect(arriving, received), budget),
    }
    return {
        "protocol": {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}[protocol],
        "size": size,
        "wire_size": len(batch[0]),
        "us_per_packet": {k: round(v, 2) for k, v in us.items()},
        "compensation_share": compensation_share(us),
    }


def compensation_share(us: dict[str, float]) -> dict[str, float]:
    """Compensation's share of the core's per-packet work: outbound (with encapsulate), inbound (with decapsulate)."""
    return {
        "outbound": round(us["before_protect"] / (us["before_protect"] + us["encapsulate"]), 3),
        "inbound": round(us["after_unprotect"] / (us["after_unprotect"] + us["decapsulate"]), 3),
    }


def _sa(config: AgentConfig, direction: str):
    return next(s.sa for s in config.sas if s.direction == direction)


def _us_per_call(call: Callable[[], object], budget: float) -> float:
    """Best of :data:`CORE_REPEAT` timeit runs, each of about ``budget`` seconds, in microseconds per call."""
    timer = timeit.Timer(call)
    number, elapsed = timer.autorange()
    number = max(1, round(number * budget / max(elapsed, 1e-9)))
    return min(timer.repeat(CORE_REPEAT, number)) / number * 1e6


# ----------------------------------------------------------------------------- output


def format_tables(result: dict) -> str:
    runs, median = result["iperf3_tcp"], result["median_bps"]
    ratio = result["ratio_nat_to_plain"]
    lines = [f"iperf3 TCP h1 -> srv1, {result['suite']} {result['mode']} mode, TUN MTU {result['tun_mtu']} "
             f"on every agent, {len(runs[NAT])} alternating rounds (Mbit/s)",
             f"  {'round':8s} {'through NAT':>11s} {'plain':>7s} {'ratio':>6s}   "
             f"{'r1 fast path':>12s} {'slow path':>9s} {'bypass':>8s} {'pkt-in':>6s}  ESP entries"]
    for i, (a, b) in enumerate(zip(runs[NAT], runs[PLAIN], strict=True)):
        path = a["nat_path"]
        lines.append(f"  {i + 1:<8d} {a['bps'] / 1e6:11.0f} {b['bps'] / 1e6:7.0f} {ratio['per_round'][i]:6.2f}   "
                     f"{path['fast_path']:12,d} {path['slow_path']:9,d} {path['bypass']:8,d} "
                     f"{path['to_controller']:6,d}  {','.join(path['esp_entries']) or '-'}")
    lines.append(f"  {'median':8s} {median[NAT] / 1e6:11.0f} {median[PLAIN] / 1e6:7.0f} {ratio['of_medians']:6.2f}"
                 f"   (median of the rounds' ratios {ratio['median_of_rounds']:.2f})")
    plain_bypass = [r["nat_path"]["bypass"] for r in runs[PLAIN]]
    plain_fast = [r["nat_path"]["fast_path"] + r["nat_path"]["slow_path"] for r in runs[PLAIN]]
    lines.append(f"  plain runs: r1 bypass flows matched {', '.join(f'{n:,d}' for n in plain_bypass)} packets; "
                 f"NAT fast+slow path {', '.join(f'{n:,d}' for n in plain_fast)}")
    cpu = result["agent_cpu_us_per_packet"]
    lines.append("  agent CPU per packet, median, us user/system: "
                 + "; ".join(f"{m} h1 {cpu[m]['h1']['user']:.1f}/{cpu[m]['h1']['system']:.1f}, "
                             f"srv1 {cpu[m]['srv1']['user']:.1f}/{cpu[m]['srv1']['system']:.1f}" for m in MODES))
    extra = result.get("h1_compensation_us_per_packet")
    if extra:
        lines.append(f"  h1 agent, through the NAT minus plain: {extra['agent_extra_user']:+.1f} us user CPU per packet; "
                     f"compensation in the core, at the NAT runs' mix of TCP out/in: {extra['core']:.1f} us")
    lines += ["", f"sans-IO core, one {result['core'][0]['size']}-byte packet, ESP AES-GCM-128 transport "
                  f"(us per packet, best of {CORE_REPEAT})",
              f"  {'':4s} {'before_protect':>14s} {'encapsulate':>11s} {'share out':>9s}   "
              f"{'decapsulate':>11s} {'after_unprotect':>15s} {'share in':>8s}"]
    for row in result["core"]:
        us, share = row["us_per_packet"], row["compensation_share"]
        lines.append(f"  {row['protocol']:4s} {us['before_protect']:14.2f} {us['encapsulate']:11.2f} "
                     f"{share['outbound']:9.0%}   {us['decapsulate']:11.2f} {us['after_unprotect']:15.2f} "
                     f"{share['inbound']:8.0%}")
    return "\n".join(lines)
