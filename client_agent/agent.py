"""The IPsec agent of one host: sets up the namespace, runs the datapath, undoes everything on exit.

What the agent does to its network namespace (ENVIRONMENT.md, "A userspace
IPsec datapath in a namespace"), in order, each step undone in reverse order
when it stops (SIGTERM, SIGINT or an error):

1. writes the Wireshark key file ``esp_sa`` of its ESP SAs into its run
   directory (so ``WIRESHARK_CONFIG_DIR=<run dir> tshark ...`` decrypts captures);
2. turns ``rp_filter`` off where it is on: an ESP reply arrives on the
   Ethernet interface from a peer whose address now routes into the TUN, and
   strict reverse-path filtering would drop it;
3. opens the TUN device with an MTU that leaves room for the ESP/AH overhead;
4. routes the protected prefixes into the TUN, in a table of their own;
5. adds the rule ``not fwmark MARK lookup TABLE``: everything except the
   agent's own marked ESP/AH consults the TUN routes first, and the agent's
   packets use the ordinary routing tables untouched. (The inverse of the
   ENVIRONMENT.md recipe, ``fwmark MARK lookup TABLE`` with a copy of the real
   route in TABLE: this way the agent never edits or copies the main table,
   and a route to the peer added after it started, say by the testbed, just works.)
6. opens the raw sockets (:mod:`client_agent.raw`), marked MARK;
7. behind the extensible NAT (``[nat]``), leases the global IP, its inbound
   SPIs and its global ports (:mod:`client_agent.agent_leases`) and waits
   until all are granted, keeps them renewed while it runs, and releases them
   on exit; the datapath compensates (:mod:`client_agent.traversal`).

Counters: the agent writes ``status.json`` in its run directory every second,
on SIGUSR1 and on exit (SIGUSR1 also logs them): the datapath's packets, octets
and drops by reason, and each SA's packets, octets and sequence number.
"""

from __future__ import annotations

import cProfile
import json
import logging
import os
import secrets
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from client_agent.agent_config import OUTBOUND, AgentConfig, databases
from client_agent.agent_ike_shell import IkeShell, LeasedIke
from client_agent.agent_leases import (
    IKE_CHILD_SPIS,
    RELEASE_GIVE_UP_S,
    LeasePlan,
    LeaseSocket,
    child_spi_label,
    child_spi_lease,
    ike_leases,
    ike_spi_label,
    ike_spi_lease,
    wanted_leases,
)
from client_agent.alg import TEST_ALG_PORT, AddressTextAlg, AlgRegistry
from client_agent.datapath import Datapath
from client_agent.ftp_alg import FtpAlg
from client_agent.ipsec.keyfile import FILENAME as KEYFILE_NAME
from client_agent.ipsec.keyfile import esp_sa_file
from client_agent.ipsec.sa import SAState
from client_agent.lease_client import LeaseClient
from client_agent.natt import NattSocket
from client_agent.raw import RawReceiver, RawSender
from client_agent.traversal import Traversal
from client_agent.tun import Tun
from netwire.ftp import FTP_CONTROL_PORT
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP, IPPROTO_TCP, IPPROTO_UDP, MIN_SPI

STATUS_NAME = "status.json"

CONF = Path("/proc/sys/net/ipv4/conf")

log = logging.getLogger("natlab.agent")


def _fresh_child_spi() -> int:
    """A random CHILD SPI to lease, above the range RFC 4303 section 2.1 reserves."""
    return MIN_SPI + secrets.randbelow(2**32 - MIN_SPI)


class Agent:
    """One agent; a context manager: entering sets the namespace up, leaving restores it."""

    def __init__(self, config: AgentConfig, run_dir: Path | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir) if run_dir else config.run_directory
        self.sad, self.spd = databases(config)
        for state in () if config.verify_icv else self.sad.inbound:  # the fault switch of CTRL-NOVERIFY
            state.verify_icv = False
        self.datapath: Datapath | None = None
        self.leases: LeaseSocket | None = None
        self.traversal: Traversal | None = None
        self.ike: IkeShell | None = None
        self.state = "starting"
        self._stack = ExitStack()
        self._stop = False

    @property
    def keyfile(self) -> Path:
        return self.run_dir / KEYFILE_NAME

    @property
    def status_file(self) -> Path:
        return self.run_dir / STATUS_NAME

    def __enter__(self) -> Agent:
        try:
            self._setup()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.state = "stopped"
        try:
            self._stack.close()
        finally:
            self.write_status()

    def _setup(self) -> None:
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _write_private(self.keyfile, esp_sa_file(self.sad))
        for name in _rp_filter_on():
            self._set_sysctl(CONF / name / "rp_filter", "0")
        tun = Tun(config.tun, config.tun_mtu(), vnet_hdr=config.coalesce, txqueuelen=config.txqueuelen)
        self._stack.callback(tun.close)
        self._set_sysctl(CONF / config.tun / "rp_filter", "0", restore=False)
        table = str(config.table)
        for prefix in config.routes:
            route = [prefix, "dev", config.tun, "table", table, *(["src", config.address] if config.address else [])]
            _ip("route", "add", *route)
            self._stack.callback(_ip, "route", "del", *route, check=False)
        rule = ["not", "fwmark", hex(config.mark), "lookup", table, "pref", str(config.rule_priority)]
        _ip("rule", "del", *rule, check=False, quiet=True)  # only a killed agent can have left this very rule
        _ip("rule", "add", *rule)
        self._stack.callback(_ip, "rule", "del", *rule, check=False)
        sender = RawSender(config.mark, config.link_mtu)
        self._stack.callback(sender.close)
        receivers = []
        for protocol in sorted({state.protocol for state in self.sad.inbound} | _ike_protocols(config)):
            receiver = RawReceiver(protocol, config.mark)
            self._stack.callback(receiver.close)
            receivers.append(receiver)
        leased = self._ike_leases() if config.nat is not None and config.ike is not None else None
        if config.nat is not None:
            self._lease(ike_leases(config, leased.spi_i, leased.child_spis, leased.spare_spi_i) if leased else [])
            self.traversal = traversal_of(config)
        natt = self._natt(config, leased, receivers)
        self.datapath = Datapath(tun, tun.write, receivers, natt.sender(sender.send) if natt else sender.send,
                                 self.sad, self.spd, traversal=self.traversal,
                                 deliver_frame=tun.write_frame if config.coalesce else None)
        if natt is not None:
            natt.drop = self.datapath._drop  # UDP-level refusals counted with ESP's (issue 15)
        if config.ike is not None:  # keyed by IKEv2: SAs arrive as they are negotiated
            self.ike = IkeShell(config.ike, config.address or "0.0.0.0", self.sad, self.spd, self.run_dir, config.mark,
                                leased, natt)
            self._stack.callback(self.ike.close)
        self.state = "running"
        log.info("agent %s: %s up, mtu %d, routes %s, %d SAs, %d policies; run directory %s", config.name,
                 config.tun, tun.mtu, ", ".join(config.routes) or "none", len(self.sad), len(self.spd.policies),
                 self.run_dir)

    def _natt(self, config: AgentConfig, leased: LeasedIke | None, receivers: list) -> NattSocket | None:
        """With ``[ike]``, UDP/4500 (RFC 3948): IKE floats there and ESP-in-UDP arrives there when a NAT is seen."""
        if config.ike is None:
            return None
        address = config.address or "0.0.0.0"
        natt = NattSocket(address, leased.global_ip if leased and leased.global_ip else address, config.mark,
                          keepalive=config.ike.keepalive)
        self._stack.callback(natt.close)
        receivers.append(natt)
        return natt

    def _ike_leases(self) -> LeasedIke:
        """The IKE SPI and CHILD SPIs to lease (steps 801-802): drawn at random, the NAT refuses any in use."""
        ike, nat = self.config.ike, self.config.nat
        if ike is None or nat is None:
            raise RuntimeError("IKE SPI leases need both the [ike] and the [nat] table")
        protocols = ([IPPROTO_ESP] if ike.esp else []) + ([IPPROTO_AH] if ike.ah else [])
        children = [(p, _fresh_child_spi()) for p in protocols for _ in range(IKE_CHILD_SPIS)]
        return LeasedIke(nat.global_ip, _ike_spi(), children, natd_global=ike.natd_global,
                         held=self._child_spi_held, on_released=self._replace_child_spi, spare_spi_i=_ike_spi(),
                         ike_held=self._ike_spi_held, on_ike_spi_taken=self._lease_spare_ike_spi,
                         on_ike_spi_released=self._retire_ike_spi)

    def _ike_spi_held(self, spi: int) -> bool:
        return self.leases is not None and spi in self.leases.plan.held_gpns(IPPROTO_UDP)

    def _lease_spare_ike_spi(self, taken: int) -> int:
        """Step 801 ahead of the next IKE SA rekey: ``taken`` became an SPIi, a fresh spare is leased."""
        assert self.leases is not None
        spare = _ike_spi()
        self.leases.plan.add(ike_spi_lease(self.config, spare), time.monotonic())
        self.leases.flush(time.monotonic())
        log.info("agent %s: IKE SPI 0x%016x taken for a rekey, 0x%016x being leased", self.config.name, taken, spare)
        return spare

    def _retire_ike_spi(self, spi: int) -> None:
        """The IKE SA of SPIi ``spi`` was rekeyed away: its lease goes back."""
        assert self.leases is not None
        self.leases.plan.retire(ike_spi_label(spi), time.monotonic())
        self.leases.flush(time.monotonic())
        log.info("agent %s: IKE SPI 0x%016x released (its IKE SA was rekeyed)", self.config.name, spi)

    def _child_spi_held(self, protocol: int, spi: int) -> bool:
        return self.leases is not None and spi in self.leases.plan.held_gpns(protocol)

    def _replace_child_spi(self, protocol: int, spi: int) -> int:
        """Step 802's end: the SA of ``spi`` is gone, its lease goes back; a fresh SPI is leased for the next."""
        assert self.leases is not None
        now, plan = time.monotonic(), self.leases.plan
        plan.retire(child_spi_label(protocol, spi), now)
        fresh = _fresh_child_spi()
        plan.add(child_spi_lease(self.config, protocol, fresh), now)
        self.leases.flush(now)
        log.info("agent %s: CHILD SPI 0x%08x released, 0x%08x being leased", self.config.name, spi, fresh)
        return fresh

    def _lease(self, extra: list | None = None) -> None:
        """Steps 801-805: every lease the config needs, before any traffic; released on exit (807)."""
        nat, address = self.config.behind_nat()
        wanted = (extra or []) + wanted_leases(self.config)
        plan = LeasePlan(LeaseClient(address, nat.server), wanted, nat.lifetime)
        self.leases = leases = LeaseSocket(plan, nat.server)
        self._stack.callback(leases.close)
        self._stack.callback(self._release)
        deadline = time.monotonic() + nat.lease_timeout
        leases.tick(time.monotonic())
        while not plan.ready and time.monotonic() < deadline:
            select.select(leases.filenos(), [], [], 0.1)
            leases.pump(time.monotonic())
            leases.tick(time.monotonic())
        if not plan.ready:
            problems = "; ".join(f"{label}: {why}" for label, why in plan.problems.items()) or "no answer"
            raise OSError(f"leases from {nat.server} not granted within {nat.lease_timeout}s "
                          f"({len(plan.wanted) - plan.status()['held']} of {len(plan.wanted)} missing): {problems}")
        log.info("agent %s: %d leases granted by %s for global IP %s", self.config.name, len(plan.wanted),
                 nat.server, nat.global_ip)

    def _release(self) -> None:
        leases = self.leases
        if leases is None:
            return
        now = time.monotonic()
        releases = leases.plan.release_all(now)
        leases.flush(now)
        deadline = now + RELEASE_GIVE_UP_S
        while any(not tx.done for tx in releases) and time.monotonic() < deadline:
            select.select([leases], [], [], 0.05)
            leases.pump(time.monotonic())
            leases.tick(time.monotonic())
        log.info("agent %s: released %d leases (%d answered)", self.config.name, len(releases),
                 sum(tx.done for tx in releases))

    def _set_sysctl(self, path: Path, value: str, *, restore: bool = True) -> None:
        old = path.read_text().strip()
        path.write_text(value)
        if restore and old != value:
            self._stack.callback(_restore_sysctl, path, old)

    def run(self, profile: Path | None = None) -> None:
        """Run the datapath until SIGTERM or SIGINT; SIGUSR1 writes and logs the counters."""
        assert self.datapath is not None, "enter the agent first"
        wakeup_read, wakeup_write = socket.socketpair()
        wakeup_read.setblocking(False)
        wakeup_write.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(wakeup_write.fileno())
        handlers = {signal.SIGTERM: self._on_stop, signal.SIGINT: self._on_stop, signal.SIGUSR1: self._on_usr1}
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        self.write_status()
        datapath = self.datapath

        extra: dict[int, Callable[[], object]] = {}
        leases = self.leases
        if leases is not None:
            for fd in leases.filenos():
                extra[fd] = lambda: leases.pump(time.monotonic())
        if self.ike is not None:
            extra[self.ike.fileno()] = self.ike.pump

        def loop() -> None:
            datapath.run(lambda: self._stop, wakeup_fd=wakeup_read.fileno(), on_tick=self._on_tick, extra=extra)

        try:
            if profile is None:
                loop()
            else:
                _profiled(loop, profile)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_wakeup)
            wakeup_read.close()
            wakeup_write.close()

    def _on_tick(self) -> None:
        if self.leases is not None:
            self.leases.tick(time.monotonic())
        if self.ike is not None:
            self.ike.tick()
        self.write_status()

    def _on_stop(self, signum: int, _frame: object) -> None:
        log.info("agent %s: %s, stopping", self.config.name, signal.Signals(signum).name)
        self._stop = True

    def _on_usr1(self, _signum: int, _frame: object) -> None:
        status = self.write_status()
        log.info("agent %s counters: %s", self.config.name, json.dumps(status["counters"]))

    def status(self) -> dict[str, Any]:
        """What ``status.json`` holds."""
        counters = self.datapath.counters.as_dict() if self.datapath else {}
        return {
            "agent": self.config.name, "pid": os.getpid(), "state": self.state, "time": time.time(),
            "tun": self.config.tun, "mtu": self.config.tun_mtu(), "keyfile": str(self.keyfile),
            "counters": counters, "sas": [_sa_status(s, OUTBOUND) for s in self.sad.outbound]
            + [_sa_status(s, "inbound") for s in self.sad.inbound],
            "nat": None if self.traversal is None else self.traversal.status(),
            "leases": None if self.leases is None else self.leases.plan.status(),
            "ike": None if self.ike is None else self.ike.status(),
        }

    def write_status(self) -> dict[str, Any]:
        status = self.status()
        tmp = self.status_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(status, indent=1))
            os.replace(tmp, self.status_file)
        except OSError as err:
            log.warning("cannot write %s: %s", self.status_file, err)
        return status


def traversal_of(config: AgentConfig) -> Traversal:
    """Module 109 as the agent runs it for ``config``'s ``[nat]``: its global IP, port blocks and ALGs."""
    nat, address = config.behind_nat()
    algs = AlgRegistry()
    if "address-text" in nat.algs:
        algs.register(IPPROTO_UDP, TEST_ALG_PORT, AddressTextAlg())
    traversal = Traversal(address, nat.global_ip, nat.ports, algs=algs, compensate=nat.compensate)
    if "ftp" in nat.algs and IPPROTO_TCP in traversal.blocks:
        algs.register(IPPROTO_TCP, FTP_CONTROL_PORT, FtpAlg(traversal.blocks[IPPROTO_TCP], clock=traversal.clock,
                                                           counters=algs.counters))
    return traversal


def _ike_protocols(config: AgentConfig) -> set[int]:
    """The IP protocols an ``[ike]`` agent may receive under (raw sockets are opened before any SA exists)."""
    if config.ike is None:
        return set()
    return ({IPPROTO_ESP} if config.ike.esp else set()) | ({IPPROTO_AH} if config.ike.ah else set())


def _sa_status(state: SAState, direction: str) -> dict[str, Any]:
    sa = state.sa
    return {
        "direction": direction, "spi": f"0x{sa.spi:08x}", "protocol": sa.protocol.name, "mode": str(sa.mode),
        "encryption": sa.encryption, "integrity": sa.integrity, "src": sa.src, "dst": sa.dst,
        "packets": state.packets, "octets": state.octets, "seq": state.seq, "replay_top": state.window.top,
    }


def _ip(*args: str, check: bool = True, quiet: bool = False) -> None:
    """Run ``ip ARGS`` in this namespace; a failure raises (``check``), else is logged unless ``quiet``."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        message = f"ip {' '.join(args)}: {result.stderr.strip()}"
        if check:
            raise OSError(message)
        if not quiet:
            log.warning("%s", message)


def _ike_spi() -> int:
    """A non-zero 64-bit IKE SPI (RFC 7296 3.1) to lease; the NAT refuses one already in use."""
    return 1 + secrets.randbelow(2**64 - 1)


def _rp_filter_on() -> list[str]:
    """Interfaces (and ``all``) whose rp_filter is on."""
    return sorted(p.name for p in CONF.iterdir() if p.name != "default" and (p / "rp_filter").read_text().strip() != "0")


def _restore_sysctl(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as err:  # the interface may be gone
        log.warning("cannot restore %s to %s: %s", path, value, err)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (it holds keys)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _profiled(loop: Callable[[], None], path: Path) -> None:
    profiler = cProfile.Profile()
    try:
        profiler.runcall(loop)
    finally:
        profiler.dump_stats(str(path))
