"""``natlab bench ipsec``: a benchmark, not a test.

In one run on one testbed, with r1 as a plain L2 switch (PlainForwarding):
iperf3 TCP h1 -> srv1 in clear, then through agents in transport mode with ESP
AES-GCM-128, ESP AES-CBC-128 + HMAC-SHA1-96 and AH HMAC-SHA-256-128, and ESP
AES-GCM once more with a 9000-byte TUN MTU (the agent fragments after
encryption, RFC 4303 section 3.3.4: six times fewer packets through Python
for the same crypto work); round by round, so that drift hits every variant
alike, with fresh keys per run. Around each run the agents' CPU time is read
from /proc: microseconds of user time (Python and crypto) and system time
(the kernel: TUN, raw sockets, and the TCP/IP work a TUN write sets off) per
packet. Then the sans-IO core alone: packets per second at 64 and 1400 bytes
next to the crypto primitives alone (how much of the core is crypto), and one
AES-GCM run with both agents under cProfile. Prints tables; writes
``bench-ipsec.json``.
"""

from __future__ import annotations

import argparse
import os
import pstats
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client_agent.agent_cli import AgentProcess
from client_agent.agent_config import Peer, peer_pair
from client_agent.ipsec.bench import KINDS, packets_per_second
from client_agent.ipsec.sa import SAState
from client_agent.ipsec.suites import suite
from conformance import apps
from conformance.bench import PlainForwarding, save_result
from netwire.plan import client_ip, server_ip
from topo.testbed import Testbed, TestbedError

CLEARTEXT = "cleartext"
JUMBO_MTU = 9000
# variant -> (core suite, TUN MTU: None fits the link, larger makes the agent fragment after ESP)
VARIANTS: dict[str, tuple[str | None, int | None]] = {
    CLEARTEXT: (None, None),
    "esp-aes-gcm": ("esp-aes-gcm", None),
    "esp-aes-cbc-sha1": ("esp-aes-cbc-sha1", None),
    "ah-sha256": ("ah-sha256", None),
    f"esp-aes-gcm-mtu{JUMBO_MTU}": ("esp-aes-gcm", JUMBO_MTU),
    "esp-aes-gcm-coalesce": ("esp-aes-gcm", None),
    "esp-aes-gcm-txq4096": ("esp-aes-gcm", None),
}
OPTIONS: dict[str, dict[str, Any]] = {  # agent settings of a variant (AgentConfig fields), both agents
    "esp-aes-gcm-coalesce": {"coalesce": True},  # inbound TCP written as super-segments (client_agent.coalesce)
    "esp-aes-gcm-txq4096": {"txqueuelen": 4096},  # the TUN's queue toward the agent, 8 times Linux's default
}
CORE_KINDS = ("esp-aes-gcm", "esp-aes-cbc-sha1", "ah-sha256")
CORE_SIZES = (64, 1400)
TICKS = os.sysconf("SC_CLK_TCK")
# cProfile rows that are the crypto primitives (cryptography's Rust/OpenSSL bindings) and the system calls.
CRYPTO_CALLS = ("AESGCM", "_rust.openssl.hmac", "'update' of", "'finalize' of", "'copy' of", "urandom")
SYSCALLS = ("posix.read", "posix.write", "'sendto' of", "'recv' of")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=5, help="length of each iperf3 run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the variants (default 3)")
    p.add_argument("--core-seconds", type=float, default=1, help="timing of each core figure (default 1)")
    p.add_argument("--no-profile", action="store_true", help="skip the profiled AES-GCM run")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated subset of {', '.join(VARIANTS)} (default all; cleartext is always run)")
    p.add_argument("--out", default="reports", help="where bench-ipsec.json goes (default reports/)")


def run(args: argparse.Namespace) -> int:
    print(f"natlab bench ipsec: {args.rounds} rounds of {args.seconds:.0f} s iperf3 TCP h1 -> srv1 per variant, "
          "transport mode, plain forwarding")
    try:
        chosen = [CLEARTEXT, *(v for v in args.variants.split(",") if v in VARIANTS and v != CLEARTEXT)]
        result = bench_ipsec(args.seconds, args.rounds, args.core_seconds, profile=not args.no_profile,
                             variants=chosen)
    except (TestbedError, RuntimeError) as exc:
        print(f"natlab bench ipsec: {exc}", file=sys.stderr)
        return 1
    path = save_result("ipsec", result, args.out)
    print_tables(result)
    print(f"written to {path}")
    return 0


def bench_ipsec(seconds: float, rounds: int, core_seconds: float, *, profile: bool = True, log=print,
                variants: list[str] | None = None) -> dict:
    chosen = list(variants or VARIANTS)
    runs: dict[str, list[dict]] = {v: [] for v in chosen}
    with tempfile.TemporaryDirectory(prefix="natlab-bench-ipsec-") as tmp, \
            Testbed(clients=1, servers=1, globals=1) as tb:
        work = Path(tmp)
        h1, srv1 = tb.host("h1"), tb.host("srv1")
        with PlainForwarding(tb, h1, srv1), apps.iperf3_server(srv1):
            apps.ping(h1, server_ip(1), count=1)  # ARP both ways before the first timed run
            for r in range(1, rounds + 1):
                for variant in chosen:
                    runs[variant].append(_iperf3_run(tb, variant, seconds, work / f"r{r}-{variant}"))
                log(f"  round {r}/{rounds}: " + ", ".join(
                    f"{v} {runs[v][-1]['bps'] / 1e6:.0f}" for v in chosen) + " Mbit/s")
                for v in chosen:
                    if runs[v][-1].get("error") or runs[v][-1].get("drops"):
                        log(f"    {v}: {runs[v][-1].get('error', '')} drops {runs[v][-1].get('drops')} "
                            f"kernel {runs[v][-1].get('kernel')}")
            profiled = _profiled_run(tb, seconds, work / "profile") if profile else None
    throughput = {v: statistics.median(x["bps"] for x in runs[v]) for v in chosen}
    log("  timing the sans-IO core ...")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "path": f"{client_ip(1)} -> s1 -> r1 (plain L2) -> s2 -> {server_ip(1)}, OVS userspace datapath, "
                "one agent per host, transport mode",
        "iperf3_tcp": runs,
        "median_bps": throughput,
        "ratio_to_cleartext": {v: throughput[v] / throughput[CLEARTEXT] for v in chosen},
        "agent_cpu_us_per_packet": {v: median_cpu(runs[v]) for v in chosen if v != CLEARTEXT},
        "core": [_core_figures(kind, size, core_seconds) for kind in CORE_KINDS for size in CORE_SIZES],
        "profile": profiled,
    }


def _agents(tb: Testbed, variant: str, work: Path, profile: bool = False) -> tuple[AgentProcess, AgentProcess]:
    """Agents in h1 and srv1 with fresh keys for ``variant``; ``profile`` runs each under cProfile (SIDE.prof)."""
    kind, mtu = VARIANTS[variant]
    if kind is None:
        raise ValueError(f"variant {variant!r} runs no agents")
    extra: dict[str, Any] = {"mtu": mtu} if mtu else {}
    left, right = peer_pair(suite(KINDS[kind]), Peer("h1", client_ip(1)), Peer("srv1", server_ip(1)), **extra)
    options = OPTIONS.get(variant, {})
    left, right = replace(left, **options), replace(right, **options)
    first, second = (
        AgentProcess(tb.host(config.name), config, work / config.name,
                     *(["--profile", str(work / f"{config.name}.prof")] if profile else []))
        for config in (left, right)
    )
    return first, second


def _iperf3_run(tb: Testbed, variant: str, seconds: float, work: Path) -> dict:
    """One iperf3 run of ``variant``: its rate, iperf3's error if it failed, the agents' costs and drops, and the
    kernels' reassembly and retransmission counters over the run (what a stalled jumbo run needs explained)."""
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    if variant == CLEARTEXT:
        tcp = apps.iperf3(h1, server_ip(1), seconds=seconds)
        return {"bps": tcp["bps"], **({"error": tcp["error"]} if "error" in tcp else {})}
    sender, receiver = _agents(tb, variant, work)
    with sender, receiver:
        before = [cpu_times(a) for a in (sender, receiver)]
        kernel_before = {"h1": snmp(h1), "srv1": snmp(srv1)}
        tcp = apps.iperf3(h1, server_ip(1), seconds=seconds)
        kernel = {side: _delta(kernel_before[side], snmp(host)) for side, host in (("h1", h1), ("srv1", srv1))}
        for side, host, agent in (("h1", h1, sender), ("srv1", srv1, receiver)):  # the TUN's own drops
            tun = agent.config.tun if agent.config else "ipsec0"
            dropped = host.cmd(f"cat /sys/class/net/{tun}/statistics/tx_dropped").strip()
            if dropped.isdigit() and int(dropped):
                kernel[side]["tun_tx_dropped"] = int(dropped)
        after = [cpu_times(a) for a in (sender, receiver)]
    return {"bps": tcp["bps"], **({"error": tcp["error"]} if "error" in tcp else {}), "kernel": kernel,
            **agent_costs((sender, receiver), before, after)}


SNMP_FIELDS = ("Ip:ReasmReqds", "Ip:ReasmOKs", "Ip:ReasmFails", "Ip:ReasmTimeout", "Ip:FragCreates",
               "Tcp:RetransSegs", "Tcp:InErrs", "Tcp:InCsumErrors")


def snmp(host) -> dict[str, int]:
    """The host's /proc/net/snmp counters named in :data:`SNMP_FIELDS` (its own namespace's)."""
    lines = host.cmd("cat /proc/net/snmp").splitlines()
    values: dict[str, int] = {}
    for names, numbers in zip(lines[::2], lines[1::2], strict=False):
        group, *keys = names.split()
        for key, value in zip(keys, numbers.split()[1:], strict=False):
            if f"{group}{key}" in SNMP_FIELDS and value.lstrip("-").isdigit():
                values[f"{group}{key}"] = int(value)
    return values


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def agent_costs(agents: tuple[AgentProcess, AgentProcess], before: list[dict], after: list[dict]) -> dict:
    """Packets, CPU microseconds per packet and drops of the (h1, srv1) agents between two :func:`cpu_times`."""
    counters = [a.status()["counters"] for a in agents]  # as the agents wrote them on stopping
    packets = [c["protected"] + c["received"] for c in counters]
    cpu = {
        side: {kind: round((a[kind] - b[kind]) / max(n, 1) * 1e6, 1) for kind in ("user", "system")}
        for side, b, a, n in zip(("h1", "srv1"), before, after, packets, strict=True)
    }
    drops = {side: c["drops"] for side, c in zip(("h1", "srv1"), counters, strict=True) if c["drops"]}
    merged = {side: round(c["delivered"] / c["tun_writes"], 1)  # packets per TUN write, when coalescing
              for side, c in zip(("h1", "srv1"), counters, strict=True) if c.get("tun_writes")}
    return {"packets": dict(zip(("h1", "srv1"), packets, strict=True)), "cpu_us_per_packet": cpu, "drops": drops,
            **({"delivered_per_tun_write": merged} if merged else {})}


def cpu_times(agent: AgentProcess) -> dict[str, float]:
    """User and system CPU seconds the agent process has used (proc(5), fields 14 and 15)."""
    if agent.proc is None:
        raise RuntimeError(f"agent in {agent.host.name} is not running")
    fields = Path(f"/proc/{agent.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {"user": int(fields[11]) / TICKS, "system": int(fields[12]) / TICKS}


def median_cpu(runs: list[dict]) -> dict[str, dict[str, float]]:
    return {side: {kind: statistics.median(r["cpu_us_per_packet"][side][kind] for r in runs)
                   for kind in ("user", "system")} for side in ("h1", "srv1")}


def _profiled_run(tb: Testbed, seconds: float, work: Path) -> dict:
    """One AES-GCM run with both agents under cProfile: where their busy time goes."""
    sender, receiver = _agents(tb, "esp-aes-gcm", work, profile=True)
    with sender, receiver:
        bps = apps.iperf3(tb.host("h1"), server_ip(1), seconds=seconds)["bps"]
    return {"bps": bps, "h1": _profile_summary(work / "h1.prof"), "srv1": _profile_summary(work / "srv1.prof")}


def _profile_summary(path: Path, top: int = 8) -> dict:
    """Busy time (all but waiting in poll) split into crypto, system calls and Python, and the top functions."""
    # Stats.stats and func_std_string are pstats' own (not in typeshed):
    # {(file, line, name): (calls, primitive, tottime, cumtime, callers)}
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    name_of = pstats.func_std_string  # type: ignore[attr-defined]
    rows = [(name_of(func), tottime) for func, (_, _, tottime, _, _) in stats.items()]
    busy = sum(t for name, t in rows if "'poll' of" not in name)
    crypto = sum(t for name, t in rows if any(c in name for c in CRYPTO_CALLS))
    syscalls = sum(t for name, t in rows if any(c in name for c in SYSCALLS))
    ranked = sorted((r for r in rows if "'poll' of" not in r[0]), key=lambda r: -r[1])[:top]
    return {
        "busy_seconds": round(busy, 3),
        "share": {"crypto": round(crypto / busy, 3), "syscalls": round(syscalls / busy, 3),
                  "python": round((busy - crypto - syscalls) / busy, 3)},
        "top": [{"function": name, "share": round(t / busy, 3)} for name, t in ranked],
    }


def _core_figures(kind: str, size: int, seconds: float) -> dict:
    """Core packets per second, and the same packet size through the crypto primitives alone."""
    figures: dict[str, Any] = packets_per_second(kind, size, seconds)
    figures["kind"] = kind
    figures["crypto_only_pps"] = round(_crypto_only_pps(kind, size, seconds))
    figures["crypto_share"] = round(figures["encapsulate_pps"] / figures["crypto_only_pps"], 3)  # of the time
    return figures


def _crypto_only_pps(kind: str, size: int, seconds: float) -> float:
    """Encryptions (and ICVs) of one ``size``-byte payload per second: the floor the core builds on."""
    state = SAState(suite(KINDS[kind]).sa(0x1000))
    cipher, mac = state.cipher, state.mac
    plaintext, header = bytes(-(-size // cipher.pad_to) * cipher.pad_to), bytes(8)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for seq in range(calls + 1, calls + 257):
            iv = cipher.new_iv(seq)
            ciphertext = cipher.encrypt(header, iv, plaintext)
            if mac:
                mac.icv(header, iv, ciphertext)
        calls += 256
    return calls / elapsed


def print_tables(result: dict) -> None:
    clear = result["median_bps"][CLEARTEXT]
    print(f"\niperf3 TCP h1 -> srv1, median of {len(result['iperf3_tcp'][CLEARTEXT])} runs "
          "(agent CPU per packet in microseconds, user/system)")
    print(f"  {'variant':20s} {'Mbit/s':>7s} {'ratio':>6s}   {'h1 agent':>12s}   {'srv1 agent':>12s}")
    for variant, bps in result["median_bps"].items():
        cpu = result["agent_cpu_us_per_packet"].get(variant)
        cells = [f"{cpu[s]['user']:5.1f}/{cpu[s]['system']:<5.1f}" for s in ("h1", "srv1")] if cpu else ["", ""]
        print(f"  {variant:20s} {bps / 1e6:7.0f} {bps / clear:6.2f}   {cells[0]:>12s}   {cells[1]:>12s}")
    print("\nsans-IO core, one core, transport mode (packets/s)")
    print(f"  {'suite':30s} {'size':>5s} {'encapsulate':>12s} {'decapsulate':>12s} {'crypto alone':>13s} "
          f"{'crypto share':>12s}")
    for row in result["core"]:
        print(f"  {row['suite']:30s} {row['size']:5d} {row['encapsulate_pps']:12,d} {row['decapsulate_pps']:12,d} "
              f"{row['crypto_only_pps']:13,d} {row['crypto_share']:12.0%}")
    profile = result.get("profile")
    if profile:
        print(f"\ncProfile of both agents under iperf3, ESP AES-GCM ({profile['bps'] / 1e6:.0f} Mbit/s while profiled)")
        for side in ("h1", "srv1"):
            share = profile[side]["share"]
            print(f"  {side:5s} busy {profile[side]['busy_seconds']:.1f} s: crypto {share['crypto']:.0%}, "
                  f"system calls {share['syscalls']:.0%}, Python {share['python']:.0%}; top: "
                  + ", ".join(f"{t['function'].rsplit('/', 1)[-1]} {t['share']:.0%}" for t in profile[side]["top"][:4]))
