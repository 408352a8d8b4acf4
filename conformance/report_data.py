"""What the report's first screen and plots show, taken from the results and the run's files.

Kept apart from the drawing (``conformance/plots.py``) and the page
(``conformance/report_html.py``) so each is small and testable on recorded
data: the verdict of each (behaviour, matrix cell), the throughput of every
benchmark variant with its rounds, the lease timeline of CL-RENEW read from
h1's capture, and the NAT's fast/slow path shares.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from conformance.registry import MATRIX_CELLS, Registry
from conformance.results import ScenarioResult

NO_CELL = "single check"  # the column of behaviours that are not checked per matrix cell
NOT_RUN = "not run"
NOT_IMPLEMENTED = "not implemented"


def cell_labels() -> list[str]:
    """The matrix cells in matrix order, as the results label them ("AH/transport/TCP")."""
    return ["/".join(c.values()) for c in MATRIX_CELLS]


def cell_verdict(results: Sequence[ScenarioResult]) -> str:
    """One (behaviour, cell)'s verdict: error or fail if any result is; pass if all pass; else not run."""
    verdicts = {r.verdict for r in results}
    for worst in ("error", "fail", "pass"):
        if worst in verdicts:
            return worst
    return NOT_RUN


def verdict_matrix(registry: Registry, results: Sequence[ScenarioResult]) -> dict[str, dict[str, str]]:
    """Behaviour id -> {cell label or NO_CELL: verdict}: the matrix of the first screen (controls excluded).

    A matrix behaviour gets a verdict per cell (NOT_RUN for a cell no result covers); any other a single
    one, from all its results; a behaviour with no result at all is NOT_IMPLEMENTED throughout."""
    shown: dict[str, dict[str, str]] = {}
    own = [r for r in results if not r.control]
    for b in registry:
        mine = [r for r in own if r.behaviour == b.id]
        if not mine:  # no scenario at all: "not implemented", never a pass (conformance/report.py)
            shown[b.id] = dict.fromkeys(cell_labels() if b.matrix else [NO_CELL], NOT_IMPLEMENTED)
        elif b.matrix:
            shown[b.id] = {c: cell_verdict([r for r in mine if r.cell_label() == c]) for c in cell_labels()}
        else:
            shown[b.id] = {NO_CELL: cell_verdict(mine)}
    return shown


def control_label(verdict: str) -> str:
    """What a control's verdict means (its results are relative to the predicted failure)."""
    return {"pass": "failed as predicted", "fail": "did not fail: check failed"}.get(verdict, "not run")


# --- benchmarks -------------------------------------------------------------------------------------------


def bench_rounds(folder: Path) -> dict[str, dict[str, list[float]]]:
    """``natlab bench`` results in ``folder`` (bench-NAME.json): NAME -> variant -> bit/s of each round.

    ``bench nat`` writes ``iperf3_tcp_bps`` (lists of numbers); ``bench ipsec`` and ``bench e2e`` write
    ``iperf3_tcp`` (lists of runs with ``bps``). Files that hold neither, or do not parse, are left out."""
    found: dict[str, dict[str, list[float]]] = {}
    for path in sorted(folder.glob("bench-*.json")):
        try:
            data = json.loads(path.read_text())
            rounds = _rounds(data)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue
        if rounds:
            found[path.stem.removeprefix("bench-")] = rounds
    return found


def _rounds(data: Mapping) -> dict[str, list[float]]:
    if "iperf3_tcp_bps" in data:
        return {v: [float(x) for x in runs] for v, runs in data["iperf3_tcp_bps"].items() if runs}
    if "iperf3_tcp" in data:
        return {v: [float(run["bps"]) for run in runs] for v, runs in data["iperf3_tcp"].items() if runs}
    return {}


# --- the lease timeline of CL-RENEW -----------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseEvent:
    """One successful PCP answer to a client: at ``time`` s, the lease ``lease`` lives ``lifetime`` s more."""

    lease: str  # "LEASE 1" ... in order of first grant
    time: float
    lifetime: int
    kind: str  # first (the grant, if the capture began before it) | renew | release


LEASE_OPCODES = ("MAP", "PEER", "LEASE")  # what has a lifetime (DEFINE's lives by its leases, READ is a query)


def lease_events(pcap: Path, pcp_port: int) -> list[LeaseEvent]:
    """The successful PCP answers (from UDP ``pcp_port``) on a client's wire to MAP, PEER and LEASE,
    grouped per lease by (opcode, nonce) (RFC 6887 11.1: the nonce names the mapping). Times from the
    first answer."""
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    from netwire import pcp

    answers = []
    for frame in rdpcap(str(pcap)):
        if UDP not in frame or frame[UDP].sport != pcp_port:
            continue
        try:
            response = pcp.decode_response(bytes(frame[UDP].payload))
        except pcp.PcpError:
            continue
        nonce, opcode = getattr(response.info, "nonce", None), pcp.Opcode(response.opcode).name
        if response.result == pcp.Result.SUCCESS and nonce is not None and opcode in LEASE_OPCODES:
            answers.append((float(frame.time), opcode, nonce, response.lifetime))
    return _events(answers)


def _events(answers: list[tuple[float, str, bytes, int]]) -> list[LeaseEvent]:
    if not answers:
        return []
    start = min(a[0] for a in answers)
    names: dict[tuple[str, bytes], str] = {}
    events = []
    for t, opcode, nonce, lifetime in sorted(answers, key=lambda a: a[0]):
        key = (opcode, nonce)
        first = key not in names
        names.setdefault(key, f"{opcode} {sum(k[0] == opcode for k in names) + 1}")
        kind = "release" if lifetime == 0 else "first" if first else "renew"
        events.append(LeaseEvent(names[key], round(t - start, 3), lifetime, kind))
    return events


def renew_capture(results: Sequence[ScenarioResult], run_dir: Path) -> Path | None:
    """The capture of CL-RENEW's client wire, if the run has one."""
    for r in results:
        if r.behaviour == "CL-RENEW":
            for p in r.evidence:
                if p.endswith(".pcap") and (run_dir / p).is_file():
                    return run_dir / p
    return None


# --- the NAT's paths ---------------------------------------------------------------------------------------


_PATHS = re.compile(r"fast path (\d+), to the controller (\d+); translated by the controller \(slow path\) (\d+)")


def path_shares(environment: Mapping[str, object]) -> dict[str, int] | None:
    """Packets per path over the run, from the runner's "NAT paths" line (conformance/runner.py): translated
    by r1's flows (fast), translated by the controller (slow), and r1's packet-ins (first packets, punts)."""
    found = _PATHS.search(str(environment.get("NAT paths", "")))
    if found is None:
        return None
    fast, controller, slow = (int(x) for x in found.groups())
    return {"fast": fast, "slow": slow, "to_controller": controller}


# --- the BEHAVE ledger (issue 14, items 1-3) -----------------------------------------------------------------


def ledger_rows(results: Sequence[ScenarioResult], run_dir: Path) -> list[dict]:
    """The requirement ledger a run wrote as evidence (``.../ledger.json``: one object per requirement with
    rfc, req, level, verdict, ...), or [] when the run has none or it does not parse."""
    for r in results:
        for p in r.evidence:
            if Path(p).name == "ledger.json" and (run_dir / p).is_file():
                try:
                    rows = json.loads((run_dir / p).read_text())
                except (OSError, ValueError):
                    return []
                keys = {"rfc", "req", "level", "verdict"}
                return rows if isinstance(rows, list) and all(isinstance(x, dict) and keys <= x.keys()
                                                              for x in rows) else []
    return []
