"""``natlab controller`` and ``natlab table``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys

from nat_app.config import DEFAULT_CONTROL_SOCKET, ConfigError, NatConfig, global_pool
from nat_app.control import ControlError, request

OPENFLOW_PORT = 6653
DEFAULT_STATE_PATH = "/var/lib/natlab/state.db"


def add_controller_parser(sub) -> None:
    p = sub.add_parser("controller", help="run the NAT app (os-ken) that drives r1",
                       description="Run the extensible NAT as an os-ken app. r1 connects to it over OpenFlow 1.3 "
                                   "on 127.0.0.1; `natlab table` reads its translation table over a unix socket.")
    p.add_argument("--globals", type=int, default=2, help=f"size of the global pool {global_pool(1)[0]}.. (default 2)")
    p.add_argument("--listen-port", type=int, default=OPENFLOW_PORT, help="OpenFlow port (default 6653)")
    p.add_argument("--control-socket", default=DEFAULT_CONTROL_SOCKET, help="unix socket for natlab table")
    p.add_argument("--udp-timeout", type=int, help="UDP mapping timeout in s (default 300, RFC 4787 REQ-5)")
    p.add_argument("--icmp-timeout", type=int, help="ICMP query timeout in s (default 60, RFC 5508)")
    p.add_argument("--lease-min-lifetime", type=int, help="shortest lease granted in s (default 120, RFC 6887 15)")
    p.add_argument("--lease-quota", type=int, help="leases one client may hold (default 64)")
    p.add_argument("--state", default=DEFAULT_STATE_PATH, metavar="PATH",
                   help=f"state database (SQLite): entries, leases, ports survive a restart (default {DEFAULT_STATE_PATH}; "
                        "'none' for an ephemeral controller)")
    p.add_argument("--no-state", dest="state", action="store_const", const="none", help="same as --state none")
    p.add_argument("--log", help="log file (default: stderr)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run_controller)


def add_table_parser(sub) -> None:
    p = sub.add_parser("table", help="print the NAT's live translation table (FIG. 6)",
                       description="Print every translation entry with its FIG. 6 fields, and the NAT's counters.")
    p.add_argument("--control-socket", default=DEFAULT_CONTROL_SOCKET)
    p.add_argument("--json", action="store_true", help="raw JSON")
    p.set_defaults(func=show_table)


def run_controller(args: argparse.Namespace) -> int:
    extra = {k: v for k, v in (("udp_timeout", args.udp_timeout), ("icmp_timeout", args.icmp_timeout),
                               ("lease_min_lifetime", args.lease_min_lifetime), ("lease_quota", args.lease_quota))
             if v is not None}
    try:
        if not 1 <= args.globals <= 99:
            raise ConfigError(f"globals: {args.globals!r} is not in 1..99")
        config = NatConfig(globals=global_pool(args.globals), control_socket=args.control_socket, **extra)
    except ConfigError as exc:
        print(f"natlab controller: {exc}", file=sys.stderr)
        return 2
    try:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", args.listen_port))
    except OSError as exc:
        print(f"natlab controller: cannot listen on 127.0.0.1:{args.listen_port} ({exc.strerror}); "
              "is another controller running? (--listen-port picks another port)", file=sys.stderr)
        return 2
    handler = logging.FileHandler(args.log) if args.log else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: _shutdown(config, signum))

    from os_ken import cfg
    from os_ken.base.app_manager import AppManager

    from nat_app import app

    app.CONFIG = config
    if args.state != "none":
        from nat_app.store import StateRefused, open_state

        try:
            app.CORE, app.STORE, app.JOURNAL, app.STATE_NOTE = open_state(config, args.state)
        except (StateRefused, OSError) as exc:
            print(f"natlab controller: state: {exc}", file=sys.stderr)
            return 2
        logging.getLogger("natlab.nat").log(logging.INFO if app.CORE.state_lost is False else logging.WARNING,
                                            "state: %s", app.STATE_NOTE)
    cfg.CONF(args=["--ofp-listen-host", "127.0.0.1", "--ofp-tcp-listen-port", str(args.listen_port)],
             project="os_ken")
    logging.getLogger("natlab.nat").info("controller up: OpenFlow 127.0.0.1:%d, control %s, globals %s",
                                         args.listen_port, config.control_socket, ", ".join(config.globals))
    AppManager.run_apps(["nat_app.app"])
    return 0


def _shutdown(config: NatConfig, signum: int) -> None:
    """os-ken's threads cannot be joined once they block: tidy up and leave at once."""
    logging.getLogger("natlab.nat").info("controller stopping (signal %d)", signum)
    logging.shutdown()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(config.control_socket)
    os._exit(0)


def show_table(args: argparse.Namespace) -> int:
    try:
        snap = request(args.control_socket, "table")
    except ControlError as exc:
        print(f"natlab table: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(snap, indent=2))
        return 0
    print(format_table(snap))
    return 0


_COLUMNS = ("id", "kind", "protocol", "udp_port", "private_ip", "private_gpn", "global_ip", "global_gpn", "foreign",
            "expires_in", "idle_timeout", "path", "slow_packets")


def format_table(snap: dict) -> str:
    """The FIG. 6 fields of every entry, then the counters, as aligned text."""
    rows = [_COLUMNS] + [tuple(_cell(c, e.get(c)) for c in _COLUMNS) for e in snap["entries"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"{len(snap['entries'])} entries; r1 {'connected' if snap.get('connected') else 'NOT connected'}"
                 f"; globals {', '.join(snap['globals'])}{'; BYPASS (plain L2)' if snap.get('bypass') else ''}")
    if snap.get("state"):
        lines.append(f"state: {snap['state']}")
    lines.append("counters: " + ", ".join(f"{k}={v}" for k, v in snap["counters"].items()))
    lines += _savi_lines(snap)
    if snap.get("switch_packets"):
        lines.append("packets matched in r1 by band: " +
                     ", ".join(f"{k}={v}" for k, v in snap["switch_packets"].items()))
    return "\n".join(lines)


def _savi_lines(snap: dict) -> list[str]:
    """s1's source-address bindings (port, MAC, IP) and why it dropped frames (RFC 7039)."""
    savi = snap.get("savi")
    if not savi:
        return []
    state = "connected" if snap.get("s1_connected") else "NOT connected"
    bound = ", ".join(f"port {b['port']} {b['mac']} {b['ip']}" for b in savi["bindings"]) or "none"
    return [f"SAVI on s1 ({state}): bindings {bound}",
            "SAVI counters: " + (", ".join(f"{k}={v}" for k, v in savi["counters"].items()) or "none")]


def _cell(column: str, value) -> str:
    if value is None:
        return "any" if column == "foreign" else "-"
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)
