"""The os-ken shell of the extensible NAT: events in, core calls, OpenFlow out.

Two switches connect: r1 (the NAT) and s1 (the access switch, dispatched by
its dpid to ``savi.SaviCore``, source-address validation). All decisions live
in ``decide.NatCore`` and ``savi.SaviCore``; this module only moves events and
messages, runs a one-second clock and serves the control socket. Set
``CONFIG`` before ``AppManager.run_apps(['nat_app.app'])`` (``natlab
controller`` does).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import socket
import threading
import time

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

from nat_app.config import NatConfig
from nat_app.decide import NatCore
from nat_app.flows import to_openflow
from nat_app.messages import priority_band
from nat_app.savi import SaviCore
from nat_app.table import TableCorrupt

CONFIG: NatConfig | None = None
TICK_S = 1.0
FLOW_STATS_EVERY = 2  # ticks: how often r1's flow counters are read for the fast-path figures
LOG = logging.getLogger("natlab.nat")


class NatApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = CONFIG or NatConfig()
        self.savi = SaviCore(self.config)  # s1, the access switch: source-address validation (RFC 7039)
        self.core = NatCore(self.config, savi=self.savi)
        self.lock = threading.Lock()
        self.datapath = None
        self.access = None  # s1's datapath
        self.fast_path: dict[str, int] = {}  # packets counted by r1's flows, by priority band
        self._server = _bind_control_socket(self.config.control_socket)
        self.threads.append(hub.spawn(self._clock))
        self.threads.append(hub.spawn(self._serve_control))

    def close(self) -> None:
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.control_socket)

    # ------------------------------------------------------------ OpenFlow

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _switch_features(self, ev) -> None:
        dp = ev.msg.datapath
        if dp.id == self.savi.savi.dpid:
            LOG.info("s1 (access switch, SAVI) connected: dpid=%016x", dp.id)
            with self.lock:
                self.access = dp
                self._send(self.savi.switch_connected(time.monotonic()), dp)
            return
        if self.config.dpid is not None and dp.id != self.config.dpid:
            LOG.warning("ignoring switch dpid=%016x (r1 is %016x)", dp.id, self.config.dpid)
            return
        LOG.info("r1 connected: dpid=%016x", dp.id)
        with self.lock:
            self.datapath = dp
            self._send(self.core.switch_connected(time.monotonic()))

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev) -> None:
        msg = ev.msg
        if msg.datapath is self.access:
            with self.lock:
                self._send(self.savi.packet_in(msg.match["in_port"], bytes(msg.data), time.monotonic()), self.access)
            return
        if msg.datapath is not self.datapath:
            return
        with self.lock:
            self._send(self.core.packet_in(msg.match["in_port"], bytes(msg.data), time.monotonic()))

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def _flow_removed(self, ev) -> None:
        if ev.msg.datapath is self.access:
            with self.lock:
                self._send(self.savi.flow_removed(ev.msg.cookie, time.monotonic(), ev.msg.packet_count), self.access)
            return
        if ev.msg.datapath is not self.datapath:
            return
        with self.lock:
            self._send(self.core.flow_removed(ev.msg.cookie, time.monotonic()))

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev) -> None:
        """A port of s1 deleted or down: the host on it left, its SAVI bindings end."""
        msg = ev.msg
        ofp = msg.datapath.ofproto
        if msg.datapath is not self.access:
            return
        if msg.reason == ofp.OFPPR_DELETE or msg.desc.state & ofp.OFPPS_LINK_DOWN:
            with self.lock:
                self._send(self.savi.port_gone(msg.desc.port_no, time.monotonic()), self.access)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev) -> None:
        msg = ev.msg
        LOG.error("OpenFlow error from switch: type=%d code=%d data=%s", msg.type, msg.code, bytes(msg.data).hex())

    def _send(self, messages, dp=None) -> None:
        """Send to ``dp`` (default r1)."""
        dp = dp or self.datapath
        if dp is None:
            return
        for message in messages:
            if getattr(message, "delay", 0):
                hub.spawn_after(message.delay, dp.send_msg, to_openflow(dp, message))
            else:
                dp.send_msg(to_openflow(dp, message))

    # --------------------------------------------------- clock and control

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _flow_stats(self, ev) -> None:
        if ev.msg.datapath is not self.datapath:
            return
        totals: dict[str, int] = {}
        for stat in ev.msg.body:
            band = priority_band(stat.priority)
            totals[band] = totals.get(band, 0) + stat.packet_count
        with self.lock:
            self.fast_path = totals

    def _clock(self) -> None:
        for n in itertools.count(1):
            hub.sleep(TICK_S)
            with self.lock:
                self._send(self.core.tick(time.monotonic()))
                if self.datapath is not None and n % FLOW_STATS_EVERY == 0:
                    parser = self.datapath.ofproto_parser
                    self.datapath.send_msg(parser.OFPFlowStatsRequest(self.datapath))

    def _serve_control(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            hub.spawn(self._answer, conn)

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5)
                line = conn.makefile("rb").readline()
                answer = self._handle(json.loads(line))
            except (OSError, ValueError) as exc:
                answer = {"error": f"bad control request: {exc}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(answer).encode() + b"\n")

    def _handle(self, req: dict) -> dict:
        op = req.get("op") if isinstance(req, dict) else None
        with self.lock:
            if op == "table":
                return {**self.core.snapshot(time.monotonic()), "connected": self.datapath is not None,
                        "s1_connected": self.access is not None,
                        "switch_packets": dict(sorted(self.fast_path.items()))}
            if op == "check":  # the table's invariants, for the abuse tests
                try:
                    self.core.table.check_invariants()
                except TableCorrupt as exc:
                    return {"ok": False, "problem": str(exc) or "index mismatch"}
                return {"ok": True, "entries": len(self.core.table)}
            if op == "bypass" and isinstance(req.get("on"), bool):
                self._send(self.core.set_bypass(req["on"]))
                return {"bypass": self.core.bypass}
        return {"error": f"unknown control request {req!r}; ops: table, check, bypass(on: bool)"}


def _bind_control_socket(path: str) -> socket.socket:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        server.bind(path)
    finally:
        os.umask(old)
    server.listen(8)
    return server
