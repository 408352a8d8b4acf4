"""The pure parts of ``natlab bench scale``: its arguments, and its figures from given measurements.

The live shell (:mod:`conformance.bench_scale`) measures; this module turns
what it measured into the per-step row, the table and the JSON, so that every
figure's arithmetic has a unit test (``tests/unit/test_bench_scale.py``):

- lease grants per second end to end, read from the PCP exchanges r1's inside
  port carried (RFC 6887 7.1/7.2: an answer has the R bit and a result code);
- the time from launching the agents until each client's first protected
  packet reached srv1's wire (the first ESP packet with the client's SPI,
  RFC 4303 2.1);
- the share of the translated packets r1's flows carried (fast path) against
  those the controller translated (slow path, seed FIG. 6 "path");
- aggregate goodput from each client's iperf3 JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from netwire.pcp import Opcode, PcpError, Result, decode_response
from netwire.plan import MAX_HOSTS

__pure__ = True

DEFAULT_STEPS = (1, 8, 32, 64)
MAX_SECONDS = 60.0  # a step's goodput run; the benchmark must stay bounded (default under ~5 min in all)
GRANTING = {Opcode.MAP, Opcode.PEER, Opcode.LEASE}  # answers that grant a lease (DEFINE and READ do not)
PCP_RESPONSE_BIT = 0x80  # RFC 6887 7.1: the R bit of the opcode octet


def parse_steps(text: str, limit: int = MAX_HOSTS) -> tuple[int, ...]:
    """``--steps 1,8,32,64``: client counts, each 1..``limit`` (the plan's host range), strictly increasing.

    Each step gets a fresh testbed, in the order given; a repeated or falling count measures nothing new,
    so it is refused.
    """
    try:
        steps = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps {text!r}: comma-separated whole numbers, e.g. 1,8,32,64") from None
    bad = [n for n in steps if not 1 <= n <= limit]
    if bad:
        raise argparse.ArgumentTypeError(f"steps {text!r}: {bad} outside 1..{limit} (netwire.plan.MAX_HOSTS)")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise argparse.ArgumentTypeError(f"steps {text!r}: each step must have more clients than the one before")
    return steps


def parse_seconds(text: str) -> float:
    """``--seconds``: each step's goodput run, more than 0 and at most :data:`MAX_SECONDS`."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds {text!r} is not a number") from None
    if not 0 < seconds <= MAX_SECONDS:  # also refuses nan
        raise argparse.ArgumentTypeError(f"seconds {text!r}: more than 0 and at most {MAX_SECONDS:g}")
    return seconds


@dataclass(frozen=True)
class Datagram:
    """One UDP payload to or from the lease server, as a capture saw it."""

    time: float
    src: str
    dst: str
    payload: bytes


def lease_exchange(datagrams: Iterable[Datagram], server: str) -> dict[str, Any]:
    """What the lease server's wire says: requests, grants, refusals by result, and the grant rate.

    The rate is grants over the span from the first request to the last grant
    (every client's agent asking at once); ``per_client_s`` is each client's
    own span, first request to last grant. An answer that does not decode is
    counted, never trusted.
    """
    requests: dict[str, float] = {}
    grants: dict[str, list[float]] = {}
    refused: dict[str, int] = {}
    undecodable = 0
    for d in sorted(datagrams, key=lambda d: d.time):
        if d.dst == server and d.payload[1:2] and not d.payload[1] & PCP_RESPONSE_BIT:
            requests.setdefault(d.src, d.time)
        elif d.src == server:
            kind = _answer_kind(d.payload)
            if kind is None:
                undecodable += 1
            elif kind == "grant":
                grants.setdefault(d.dst, []).append(d.time)
            elif kind != "other":
                refused[kind] = refused.get(kind, 0) + 1
    return _exchange_figures(requests, grants, refused, undecodable)


def _answer_kind(payload: bytes) -> str | None:
    """"grant", a refusal's result name, "other" (a DEFINE or READ answered), or None if it does not decode."""
    try:
        response = decode_response(payload)
    except PcpError:
        return None
    if response.result != Result.SUCCESS:
        return Result(response.result).name
    return "grant" if response.opcode in GRANTING and response.lifetime > 0 else "other"


def _exchange_figures(requests: Mapping[str, float], grants: Mapping[str, list[float]],
                      refused: Mapping[str, int], undecodable: int) -> dict[str, Any]:
    count = sum(len(times) for times in grants.values())
    first = min(requests.values(), default=None)
    last = max((max(times) for times in grants.values()), default=None)
    span = (last - first) if first is not None and last is not None and last > first else 0.0
    per_client = [max(grants[ip]) - requests[ip] for ip in grants if ip in requests]
    return {"clients_asking": len(requests), "clients_granted": len(grants), "grants": count,
            "refused": dict(sorted(refused.items())), "undecodable": undecodable, "span_s": round(span, 3),
            "per_second": round(count / span, 1) if span else 0.0,
            "per_client_s": _spread(per_client)}


def _spread(values: list[float]) -> dict[str, float | None]:
    """Median and maximum (None for no values), in seconds to the millisecond."""
    if not values:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def first_protected(esp: Iterable[tuple[float, int]], spis: Mapping[int, str], t0: float) -> dict[str, float | None]:
    """Per client, seconds from ``t0`` (the agents launched) to its first ESP packet seen (by SPI).

    ``esp``: (time, SPI) of every ESP packet a capture saw; ``spis``: the SPI
    each client sends under, to its name. A client never seen gets None.
    """
    seen: dict[str, float | None] = dict.fromkeys(spis.values())
    for when, spi in sorted(esp):
        name = spis.get(spi)
        if name is not None and seen[name] is None:
            seen[name] = round(when - t0, 3)
    return seen


def iperf3_result(text: str) -> dict[str, Any]:
    """bits/s received and bytes from ``iperf3 -J``'s output; an error (never a guess) when it failed."""
    try:
        report = json.loads(text[text.index("{"):])
        received = report["end"]["sum_received"]
        return {"bps": float(received["bits_per_second"]), "bytes": int(received["bytes"])}
    except (ValueError, KeyError, TypeError):
        try:
            error = json.loads(text[text.index("{"):]).get("error", "")
        except (ValueError, AttributeError):
            error = ""
        return {"bps": 0.0, "bytes": 0, "error": str(error or text.strip()[-200:] or "no output")}


def path_share(path: Mapping[str, int]) -> float | None:
    """The fast path's share of the packets the NAT translated (``bench_e2e.nat_path``'s figures)."""
    total = path.get("fast_path", 0) + path.get("slow_path", 0)
    return round(path.get("fast_path", 0) / total, 4) if total else None


def cpu_share(before: Mapping[str, float], after: Mapping[str, float]) -> float | None:
    """CPU time over wall time between two readings ({"cpu": s, "wall": s}): 1.0 is one core busy."""
    wall = after["wall"] - before["wall"]
    return round((after["cpu"] - before["cpu"]) / wall, 3) if wall > 0 else None


def step_row(raw: Mapping[str, Any]) -> dict[str, Any]:
    """One step's figures from what the shell measured (``bench_scale.run_step`` gives ``raw``).

    ``refused``: clients whose agent never ran (it exits when a lease is
    refused or not granted in time); ``lost``: leases the agents lost while
    running (their own count); ``unprotected``: clients with no ESP packet at
    srv1's wire or none that srv1's agent accepted; ``left_after_release``:
    client-ALG entries still in the table once every agent released its own.
    """
    n = raw["clients"]
    accepted = set(raw["accepted_by_peer"])
    first = [s for name, s in raw["first_protected"].items() if s is not None and name in accepted]
    goodput = list(raw["iperf3"].values())
    cpu = raw["cpu_traffic"]
    return {
        "clients": n,
        "refused": len(raw["launch"]["failed"]),
        "lost": sum(a.get("lost", 0) for a in raw["agents"].values()),
        "left_after_release": raw["leftover"],
        "leases_granted": raw["leases"]["grants"],
        "leases_granted_by_agents": sum(a.get("granted", 0) for a in raw["agents"].values()),
        "leases_per_s": raw["leases"]["per_second"],
        "lease_refusals": sum(raw["leases"]["refused"].values()),
        "table_entries": raw["table"]["entries"],
        "controller_rss_mib": round(raw["controller"]["rss_kib"] / 1024, 1),
        "controller_cpu_leases": raw["controller"]["cpu_leases"],
        "controller_cpu_traffic": cpu.get("controller"),
        "srv1_agent_cpu_traffic": cpu.get("srv1_agent"),
        "ovs_cpu_traffic": cpu.get("ovs"),
        "goodput_mbit": round(sum(r["bps"] for r in goodput) / 1e6, 1),
        "iperf3_failed": sum(1 for r in goodput if "error" in r) + n - len(goodput),
        "fast_share": path_share(raw["path"]),
        "packet_ins": raw["path"].get("to_controller", 0),
        "slow_path_packets": raw["path"].get("slow_path", 0),
        "ovs_drops_traffic": sum(raw["ovs_drops_traffic"].values()),
        "unprotected": n - len(first),
        "first_protected_s": max(first) if len(first) == n else None,
    }


def goal_met(row: Mapping[str, Any]) -> bool:
    """Issue 16's goal for a step: every client leased and protected, none refused, no lease lost."""
    return row["refused"] == 0 and row["lost"] == 0 and row["unprotected"] == 0


COLUMNS = (  # (header, key, format): the table's columns, in order
    ("clients", "clients", "{:d}"), ("leases/s", "leases_per_s", "{:,.0f}"), ("table", "table_entries", "{:,d}"),
    ("ctl MiB", "controller_rss_mib", "{:.0f}"), ("ctl CPU lease", "controller_cpu_leases", "{:.0%}"),
    ("ctl CPU data", "controller_cpu_traffic", "{:.0%}"), ("Mbit/s", "goodput_mbit", "{:,.0f}"),
    ("srv1 CPU", "srv1_agent_cpu_traffic", "{:.0%}"), ("fast path", "fast_share", "{:.1%}"),
    ("pkt-in", "packet_ins", "{:,d}"),
    ("1st ESP s", "first_protected_s", "{:.1f}"), ("refused", "refused", "{:d}"), ("lost", "lost", "{:d}"),
)


def _cell(fmt: str, value: Any) -> str:
    return "-" if value is None else fmt.format(value)


def format_table(rows: Iterable[Mapping[str, Any]], seconds: float) -> str:
    """The per-step table ``natlab bench scale`` prints, with the goal's verdict per step."""
    widths = [max(len(h), 7) for h, _, _ in COLUMNS]
    lines = [f"clients behind the extensible NAT, each agent leasing and sending ESP to srv1 at once; "
             f"goodput: {seconds:g} s of iperf3 TCP from every client together",
             "  " + " ".join(h.rjust(w) for (h, _, _), w in zip(COLUMNS, widths, strict=True)) + "  goal"]
    for row in rows:
        cells = [_cell(fmt, row[key]).rjust(w) for (_, key, fmt), w in zip(COLUMNS, widths, strict=True)]
        lines.append("  " + " ".join(cells) + ("  met" if goal_met(row) else "  NOT met"))
    lines.append("  leases/s: grants on r1's inside port, first request to last grant; ctl: the controller's RSS "
                 "and CPU (1 core = 100%); fast path: r1's flows' share of the translated packets; 1st ESP: "
                 "launch to the last client's first ESP packet at srv1")
    return "\n".join(lines)


def format_profile(who: str, summary: Mapping[str, Any]) -> str:
    """One line of a cProfile summary (``bench_ipsec._profile_summary``): busy time, its split, the top functions."""
    share = summary["share"]
    top = ", ".join(f"{t['function'].rsplit('/', 1)[-1]} {t['share']:.0%}" for t in summary["top"][:5])
    return (f"{who} under cProfile: busy {summary['busy_seconds']:.1f} s, crypto {share['crypto']:.0%}, "
            f"system calls {share['syscalls']:.0%}, Python {share['python']:.0%}; top: {top}")
