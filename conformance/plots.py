"""The report's plots as PNG bytes (matplotlib's Agg canvas: no display, no pyplot state).

Each function takes data from ``conformance/report_data.py`` and returns the
PNG, which the page embeds (``conformance/report_html.py``). Colours are the
page's verdict colours, so a plot and the matrix beside it read alike.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from conformance.report_data import NOT_RUN, LeaseEvent

COLOURS = {"pass": "#3a9d4a", "fail": "#d43d3d", "error": "#8e2b8e", "partial": "#e0a526",
           "not implemented": "#b8b8b8", NOT_RUN: "#e6e6e6", "n/a": "#ffffff"}
DPI = 100


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def verdict_matrix(matrix: Mapping[str, Mapping[str, str]], columns: Sequence[str]) -> bytes:
    """Behaviours x cells, one coloured square each (white where a behaviour has no such column)."""
    order = list(COLOURS)
    rows = list(matrix)
    grid = [[order.index(matrix[b].get(c, "n/a")) for c in columns] for b in rows]
    fig = Figure(figsize=(1.6 + 0.55 * len(columns), 0.9 + 0.24 * len(rows)))
    ax = fig.add_subplot()
    ax.imshow(grid, cmap=ListedColormap([COLOURS[v] for v in order]), vmin=0, vmax=len(order) - 1, aspect="auto")
    ax.set_xticks(range(len(columns)), [c.replace("/", "\n") for c in columns], fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_xticks([x - 0.5 for x in range(1, len(columns))], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, len(rows))], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    seen = sorted({v for r in matrix.values() for v in r.values()}, key=order.index)
    ax.legend(handles=[Patch(color=COLOURS[v], label=v) for v in seen], loc="upper left",
              bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    return _png(fig)


def throughput(benches: Mapping[str, Mapping[str, Sequence[float]]]) -> bytes:
    """Every benchmark variant's median iperf3 throughput as a bar, the rounds' spread as a range, the
    rounds themselves as dots (side by side in one run: compare within a benchmark, not across)."""
    labels, medians, lows, highs, dots = [], [], [], [], []
    for bench, variants in benches.items():
        for variant, rounds in variants.items():
            mbit = [x / 1e6 for x in rounds]
            m = statistics.median(mbit)
            labels.append(f"{bench}\n{variant}")
            medians.append(m)
            lows.append(m - min(mbit))
            highs.append(max(mbit) - m)
            dots.append(mbit)
    fig = Figure(figsize=(max(5.0, 0.9 * len(labels)), 3.6))
    ax = fig.add_subplot()
    ax.bar(range(len(labels)), medians, color="#6a8fc7", yerr=[lows, highs], capsize=4, ecolor="#333")
    for i, points in enumerate(dots):
        ax.plot([i] * len(points), points, "o", color="#222", markersize=3)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("iperf3 TCP, Mbit/s (median; range of rounds)")
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def lease_timeline(events: Sequence[LeaseEvent]) -> bytes:
    """CL-RENEW: per lease, each answer's validity (answer time to answer time + lifetime) as a bar;
    first answers (grants), renewals and releases as markers. Overlapping bars mean renewed before expiry."""
    leases = list(dict.fromkeys(e.lease for e in events))
    fig = Figure(figsize=(8.0, 0.8 + 0.32 * len(leases)))
    ax = fig.add_subplot()
    marks = {"first": ("o", "#3a9d4a"), "renew": ("|", "#1f4e9c"), "release": ("x", "#d43d3d")}
    names = {"first": "first answer (grant)", "renew": "renewal", "release": "release"}
    released = {e.lease: e.time for e in events if e.kind == "release"}
    for e in events:
        y = leases.index(e.lease)
        end = min(e.time + e.lifetime, released.get(e.lease, e.time + e.lifetime))  # a release ends it early
        if end > e.time:
            ax.barh(y, end - e.time, left=e.time, height=0.35, color="#6a8fc7", alpha=0.35)
        marker, colour = marks[e.kind]
        ax.plot(e.time, y, marker, color=colour, markersize=7)
    for y, lease in enumerate(leases):
        last = max((e for e in events if e.lease == lease), key=lambda e: e.time)
        if last.lifetime:
            ax.plot(last.time + last.lifetime, y, ">", color="#888", markersize=5)
    ax.set_yticks(range(len(leases)), leases, fontsize=7)
    ax.set_xlabel("seconds since the first answer in the capture")
    ax.legend(handles=[Patch(color=c, label=names[k]) for k, (_, c) in marks.items()] +
              [Patch(color="#888", label="expiry (last answer + lifetime)")], fontsize=7, frameon=False,
              loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.invert_yaxis()
    return _png(fig)


def path_shares(shares: Mapping[str, int]) -> bytes:
    """Fast vs slow path: the shares of the translated packets as one stacked bar; r1's packet-ins noted."""
    parts = {"fast path (r1's flows)": shares["fast"], "slow path (the controller)": shares["slow"]}
    total = sum(parts.values()) or 1
    fig = Figure(figsize=(8.0, 1.5))
    ax = fig.add_subplot()
    left = 0.0
    for (label, n), colour in zip(parts.items(), ("#3a9d4a", "#d47a3d"), strict=True):
        ax.barh(0, n / total, left=left, color=colour, label=f"{label}: {n} packets ({n / total:.1%})")
        left += n / total
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.set_xlabel(f"share of the translated packets; r1 also sent {shares['to_controller']} packets to the "
                  "controller (first packets, punts)")
    ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.7))
    return _png(fig)


def compare(result: Mapping) -> bytes:
    """``natlab bench compare``: per variant, TCP and UDP goodput (median bars, rounds as dots) and bytes on the
    wire per payload byte; then aggregate TCP goodput against clients behind one global IP."""
    variants = list(result["medians"])
    fig = Figure(figsize=(max(8.0, 1.3 * len(variants) + 4), 3.8))
    ax, wire, scale = fig.add_subplot(1, 3, (1, 1)), fig.add_subplot(1, 3, 2), fig.add_subplot(1, 3, 3)
    for offset, key, colour in ((-0.2, "tcp_bps", "#6a8fc7"), (0.2, "udp_bps", "#d4a03d")):
        medians = [(result["medians"][v][key] or 0) / 1e6 for v in variants]
        ax.bar([i + offset for i in range(len(variants))], medians, width=0.4, color=colour, label=key[:3].upper())
        for i, v in enumerate(variants):
            points = [r[key] / 1e6 for r in result["runs"][v]]
            ax.plot([i + offset] * len(points), points, "o", color="#222", markersize=3)
    ax.set_xticks(range(len(variants)), [v.replace("-", "\n") for v in variants], fontsize=7)
    ax.set_ylabel("iperf3 goodput, Mbit/s (median; rounds as dots)")
    ax.legend(fontsize=7, frameon=False)
    ratios = [result["medians"][v]["wire_bytes_per_payload_byte"] or 0 for v in variants]
    wire.bar(range(len(variants)), ratios, color="#8a8a8a")
    wire.set_ylim(min([1.0, *[r for r in ratios if r]]) * 0.98, max([1.0, *ratios]) * 1.01)
    wire.set_xticks(range(len(variants)), [v.replace("-", "\n") for v in variants], fontsize=7)
    wire.set_ylabel("IP bytes on the wire per payload byte (captured)")
    for variant, colour in (("seed", "#3a9d4a"), ("natt-napt", "#d47a3d"), ("clear-napt", "#888")):
        points = sorted((int(n), rows[variant]["aggregate_bps"] / 1e6) for n, rows in result["scaling"].items()
                        if "aggregate_bps" in rows.get(variant, {}))
        if points:
            scale.plot([p[0] for p in points], [p[1] for p in points], "o-", color=colour, label=variant)
    scale.set_xlabel("clients behind one global IP")
    scale.set_ylabel("aggregate TCP goodput, Mbit/s")
    scale.legend(fontsize=7, frameon=False)
    for a in (ax, wire, scale):
        a.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def scale_steps(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """``natlab bench scale``: how each figure grows with the number of clients (one panel per figure)."""
    panels = (("leases_per_s", "lease grants/s (end to end)"), ("goodput_mbit", "aggregate goodput, Mbit/s"),
              ("controller_rss_mib", "controller RSS, MiB"), ("fast_share", "fast path share of packets"),
              ("controller_cpu_traffic", "controller CPU (1 = a core)"), ("first_protected_s",
                                                                           "s to every first ESP packet"))
    clients = [row["clients"] for row in rows]
    fig = Figure(figsize=(9.0, 5.0))
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(2, 3, i + 1)
        points = [(c, row[key]) for c, row in zip(clients, rows, strict=True) if row[key] is not None]
        ax.plot([c for c, _ in points], [v for _, v in points], "o-", color="#6a8fc7")
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients], fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    fig.supxlabel("clients (log scale)", fontsize=8)
    fig.tight_layout()
    return _png(fig)
