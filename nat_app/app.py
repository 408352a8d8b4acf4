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
import functools
import itertools
import json
import logging
import os
import socket
import threading
import time
from typing import Any

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

from nat_app import ofwire, state
from nat_app.config import NatConfig
from nat_app.decide import NatCore
from nat_app.flows import to_openflow, to_openflow_all
from nat_app.messages import AddFlow, Barrier, DeleteFlows, PacketOut, priority_band
from nat_app.savi import SaviCore
from nat_app.store import Store
from nat_app.table import TableCorrupt

CONFIG: NatConfig | None = None
CORE: NatCore | None = None  # ``natlab controller`` restores it from STORE before the app starts
STORE: Store | None = None  # None: an ephemeral controller (--state none)
JOURNAL: state.Journal | None = None  # what STORE holds
STATE_NOTE = "ephemeral (--state none)"
TICK_S = 1.0
S1_WAIT_S = 3.0  # how long a lost-state ANNOUNCE waits for s1 (SAVI) to be reconciled
FULL_SAVE_EVERY = 30  # ticks: compare the whole state with the file (a safety net for the journal)
MAX_CLOCK_FAILURES = 3  # consecutive failed ticks before the controller ends itself
EXIT_SOFTWARE = 70  # sysexits.h EX_SOFTWARE: an internal error ended the controller
_FAILED = object()
FLOW_STATS_EVERY = 2  # ticks: how often r1's flow counters are read for the fast-path figures
LOG = logging.getLogger("natlab.nat")


def guarded(handler):
    """Crash-only shells (compare FAUCET's kill_on_exception): an exception in a handler or greenlet
    is logged with its traceback and counted; the controller goes on only if the core's table is
    still consistent and the state still saves, else it ends with a non-zero status. Never half-alive."""

    @functools.wraps(handler)
    def run(self, *args, **kwargs):
        try:
            return handler(self, *args, **kwargs)
        except Exception:
            self.crashed(handler.__name__)
            return _FAILED

    return run


class NatApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = CONFIG or NatConfig()
        self.core: NatCore = CORE or state.new_core(self.config)
        if self.core.savi is None:  # a core saved without s1: s1 connects here
            self.core.savi = SaviCore(self.config)
        self.savi = self.core.savi  # s1, the access switch: source-address validation (RFC 7039)
        self.store = STORE
        self.journal = JOURNAL or state.Journal()
        self.ready = False  # r1 connected and reconciled
        self._reconcile: tuple[int, list] | None = None  # (xid of the flow-stats request, flows seen so far)
        self._ready_xid: int | None = None  # the barrier after the reconciliation
        self.s1_ready = False  # s1 connected and its bindings reconciled with its flows
        self._s1_reconcile: tuple[int, list] | None = None
        self._s1_ready_xid: int | None = None
        self._held_announces: tuple[float, list] | None = None  # (since, PacketOuts) until s1 is reconciled
        self.lock = threading.Lock()
        self.datapath: Any = None  # r1's os-ken Datapath (os-ken is untyped)
        self.access: Any = None  # s1's datapath
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
    @guarded
    def _switch_features(self, ev) -> None:
        """Which switch this is, by the datapath id its features reply names: ``Datapath.id`` is set by
        os-ken's own handler, in another app's thread, and was still None here once (fresh-clone CI run 11:
        with no ``dpid`` configured, s1 would then have been taken for r1)."""
        dp, dpid = ev.msg.datapath, ev.msg.datapath_id
        if dpid == self.savi.savi.dpid:
            LOG.info("s1 (access switch, SAVI) connected: dpid=%016x; reading its flows to reconcile", dpid)
            with self.lock:
                self.access, self.s1_ready = dp, False
                self._s1_reconcile = (self._request_flows(dp), [])
            return
        if self.config.dpid is not None and dpid != self.config.dpid:
            LOG.warning("ignoring switch dpid=%016x (r1 is %016x)", dpid, self.config.dpid)
            return
        LOG.info("r1 connected: dpid=%016x; reading its flows to reconcile", dpid)
        with self.lock:
            self.datapath, self.ready = dp, False
            self._reconcile = (self._request_flows(dp), [])

    @staticmethod
    def _request_flows(dp) -> int:
        """Ask a switch for all its flows (to reconcile with); the request's xid."""
        request = dp.ofproto_parser.OFPFlowStatsRequest(dp)
        dp.set_xid(request)
        dp.send_msg(request)
        return request.xid

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    @guarded
    def _packet_in(self, ev) -> None:
        msg = ev.msg
        if msg.datapath is self.access:
            with self.lock:
                if self._s1_reconcile is not None:  # bindings not yet agreed with s1 (the host sends again)
                    self.savi.counters.add("packet_in_before_reconcile")
                    return
                self._commit_s1(lambda now: self.savi.packet_in(msg.match["in_port"], bytes(msg.data), now))
            return
        if msg.datapath is not self.datapath:
            return
        with self.lock:
            if self._reconcile is not None:  # the core's state is not yet agreed with r1 (a host sends again)
                self.core.counters.add("packet_in_before_reconcile")
                return
            leases = self.core.counters["lease_requests"]
            msgs = self.core.packet_in(msg.match["in_port"], bytes(msg.data), time.monotonic())
            self._commit(msgs, durable=self.core.counters["lease_requests"] != leases)

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    @guarded
    def _flow_removed(self, ev) -> None:
        if ev.msg.datapath is self.access:
            with self.lock:
                self._commit_s1(lambda now: self.savi.flow_removed(ev.msg.cookie, now, ev.msg.packet_count))
            return
        if ev.msg.datapath is not self.datapath:
            return
        with self.lock:
            self._commit(self.core.flow_removed(ev.msg.cookie, time.monotonic()), durable=True)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    @guarded
    def _port_status(self, ev) -> None:
        """A port of s1 deleted or down: the host on it left, its SAVI bindings end."""
        msg = ev.msg
        ofp = msg.datapath.ofproto
        if msg.datapath is not self.access:
            return
        if msg.reason == ofp.OFPPR_DELETE or msg.desc.state & ofp.OFPPS_LINK_DOWN:
            with self.lock:
                self._commit_s1(lambda now: self.savi.port_gone(msg.desc.port_no, now))

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    @guarded
    def _error(self, ev) -> None:
        msg = ev.msg
        LOG.error("OpenFlow error from switch: type=%d code=%d data=%s", msg.type, msg.code, bytes(msg.data).hex())

    def _commit(self, messages, durable: bool = False) -> None:
        """Save what the event changed (one transaction), then tell r1: the file never lags r1's flows."""
        if self.store is not None and (durable or any(isinstance(m, AddFlow | DeleteFlows | Barrier)
                                                      for m in messages)):
            self._save()
        self._send(messages)

    def _commit_s1(self, event) -> None:
        """Run a SAVI event; if the bindings changed, save them before s1 hears of it (as ``_commit``)."""
        before = self.savi.generation
        messages = event(time.monotonic())
        if self.store is not None and self.savi.generation != before:
            self._save()
        self._send(messages, self.access)

    def _save(self, full: bool = False) -> None:
        if self.store is None:  # an ephemeral controller (--state none) saves nothing
            return
        self.store.write(*self.journal.changes(self.core, full=full))

    def crashed(self, where: str) -> None:
        """A guarded handler raised: count it; go on only if the core and the store are sound."""
        LOG.exception("exception in %s (counted; the controller checks its state)", where)
        self.core.counters.add(f"shell_exception:{where}")
        try:
            with self.lock:
                self.core.table.check_invariants()
                if self.store is not None:
                    self._save(full=True)
        except Exception:
            LOG.exception("the state is not sound after the exception in %s", where)
            die(f"state unsound after an exception in {where}")

    def _send(self, messages, dp=None) -> None:
        """Send to ``dp`` (default r1)."""
        dp = dp or self.datapath
        if dp is None:
            return
        for message in messages:
            if getattr(message, "delay", 0):
                hub.spawn_after(message.delay, dp.send_msg, to_openflow(dp, message))
            else:
                _send_one(dp, message)

    # --------------------------------------------------- clock and control

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    @guarded
    def _flow_stats(self, ev) -> None:
        if ev.msg.datapath is self.access and self._s1_reconcile is not None \
                and ev.msg.xid == self._s1_reconcile[0]:
            self._s1_reconcile_reply(ev.msg)
            return
        if ev.msg.datapath is not self.datapath:
            return
        if self._reconcile is not None and ev.msg.xid == self._reconcile[0]:
            self._reconcile_reply(ev.msg)
            return
        totals: dict[str, int] = {}
        for stat in ev.msg.body:
            band = priority_band(stat.priority)
            totals[band] = totals.get(band, 0) + stat.packet_count
        with self.lock:
            self.fast_path = totals

    def _reconcile_reply(self, msg) -> None:
        """r1's flows, possibly in several parts; the last part lets the core reconcile (nat_app/reconcile.py)."""
        if self._reconcile is None:  # a reply nobody asked for (a stale xid): nothing to reconcile
            return
        flows = self._reconcile[1]
        flows += [(stat.cookie, stat.priority) for stat in msg.body]
        if msg.flags & self.datapath.ofproto.OFPMPF_REPLY_MORE:
            return
        with self.lock:
            self._reconcile = None
            msgs = self.core.reconcile(flows, time.monotonic())
            if not self.s1_ready:  # ANNOUNCEs wait for s1's bindings: else the re-leases race its reconciliation
                self._held_announces = (time.monotonic(), [m for m in msgs if isinstance(m, PacketOut)])
                msgs = [m for m in msgs if not isinstance(m, PacketOut)]
            self._commit(msgs, durable=True)
            barrier = self.datapath.ofproto_parser.OFPBarrierRequest(self.datapath)
            self.datapath.set_xid(barrier)
            self._ready_xid = barrier.xid
            self.datapath.send_msg(barrier)
        LOG.info("r1 reconciled: %d flows seen, %d entries kept; counters %s", len(flows), len(self.core.table),
                 {k: v for k, v in self.core.counters.values.items()
                  if k in ("started_empty", "reconciled", "entries_lost_while_away", "stale_flows_deleted")})

    def _s1_reconcile_reply(self, msg) -> None:
        """s1's flows: keep the bindings they still carry (SaviCore.reconcile), then a barrier."""
        if self._s1_reconcile is None:
            return
        flows = self._s1_reconcile[1]
        flows += [(stat.cookie, stat.priority) for stat in msg.body]
        if msg.flags & self.access.ofproto.OFPMPF_REPLY_MORE:
            return
        with self.lock:
            self._s1_reconcile = None
            self._commit_s1(lambda now: self.savi.reconcile(flows, now))
            if self.store is not None:
                self._save()
            barrier = self.access.ofproto_parser.OFPBarrierRequest(self.access)
            self.access.set_xid(barrier)
            self._s1_ready_xid = barrier.xid
            self.access.send_msg(barrier)
        LOG.info("s1 reconciled: %d flows seen; SAVI counters %s", len(flows), self.savi.counters.values)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    @guarded
    def _barrier_reply(self, ev) -> None:
        """r1 applied the reconciliation: the NAT is ready (the testbed waits for this)."""
        if ev.msg.datapath is self.datapath and ev.msg.xid == self._ready_xid:
            self.ready = True
        if ev.msg.datapath is self.access and ev.msg.xid == self._s1_ready_xid:
            with self.lock:
                self.s1_ready = True
                self._release_announces()

    def _release_announces(self) -> None:
        """Send the ANNOUNCEs held back for s1 (RFC 6887 14.1.3), their delays counted from now."""
        held, self._held_announces = self._held_announces, None
        if held is not None:
            self._send(held[1])

    def _clock(self) -> None:
        """The one-second clock; a tick that keeps failing ends the controller (expiry must not stop)."""
        failures = 0
        try:
            for n in itertools.count(1):
                hub.sleep(TICK_S)
                failures = failures + 1 if self._tick(n) is _FAILED else 0
                if failures >= MAX_CLOCK_FAILURES:
                    die(f"the clock failed {failures} times in a row")
        except Exception:
            LOG.exception("the clock greenlet failed")
            die("the clock greenlet failed")

    @guarded
    def _tick(self, n: int) -> None:
        with self.lock:
            self._commit(self.core.tick(time.monotonic()), durable=self.ready)
            if self._held_announces is not None and time.monotonic() > self._held_announces[0] + S1_WAIT_S:
                self._release_announces()  # no s1 came: no SAVI in front of r1
            if self.store is not None and self.ready and n % FULL_SAVE_EVERY == 0:
                self._save(full=True)
            if self.ready and n % FLOW_STATS_EVERY == 0:
                parser = self.datapath.ofproto_parser
                self.datapath.send_msg(parser.OFPFlowStatsRequest(self.datapath))

    def _serve_control(self) -> None:
        """Accept control connections; a failure here other than the socket closing ends the controller."""
        try:
            self._accept_loop()
        except Exception:
            LOG.exception("the control socket greenlet failed")
            die("the control socket greenlet failed")

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            hub.spawn(self._answer, conn)

    @guarded
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
                        "ready": self.ready, "state": STATE_NOTE, "s1_connected": self.access is not None,
                        "s1_ready": self.s1_ready,
                        "switch_packets": dict(sorted(self.fast_path.items()))}
            if op == "check":  # the table's invariants, for the abuse tests
                try:
                    self.core.table.check_invariants()
                except TableCorrupt as exc:
                    return {"ok": False, "problem": str(exc) or "index mismatch"}
                return {"ok": True, "entries": len(self.core.table)}
            if op == "bypass" and isinstance(req.get("on"), bool):
                self._commit(self.core.set_bypass(req["on"]), durable=True)
                return {"bypass": self.core.bypass}
        return {"error": f"unknown control request {req!r}; ops: table, check, bypass(on: bool)"}


class _Xid:
    """Takes the xid os-ken's Datapath.set_xid hands out, for bytes sent without an os-ken message object."""

    xid = 0

    def set_xid(self, xid: int) -> None:
        self.xid = xid


def _send_one(dp, message) -> None:
    """FlowMods and PacketOuts as ``ofwire`` packs them (os-ken's objects cost more than the decision,
    ``natlab bench nat-core``); anything ofwire does not know through os-ken."""
    raw = ofwire.encode(message, dp.set_xid(_Xid()))
    if raw is None:
        for of_message in to_openflow_all(dp, message):
            dp.send_msg(of_message)
    else:
        dp.send(raw)


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


def die(why: str) -> None:
    """End the controller at once with a non-zero status (r1 keeps its flows: fail_mode secure);
    a restart reloads the last saved state and reconciles."""
    LOG.critical("controller ending (exit %d): %s", EXIT_SOFTWARE, why)
    logging.shutdown()
    os._exit(EXIT_SOFTWARE)
