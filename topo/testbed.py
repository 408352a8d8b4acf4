"""Bring the testbed up and down from Python: Open vSwitch, the NAT controller
(a real ``natlab controller`` process), and the Mininet network.

Used by ``natlab up``, the conformance runner, the benchmarks and the testbed
tests. ``Testbed`` is a context manager: whatever happens, leaving it stops the
network and the controller and removes what they made.

``Testbed(nat="classic")`` builds the same network with r1 as a traditional
Linux NAT (RFC 3022, nftables masquerade) and no controller: the control
against which the extensible NAT's behaviours must be seen to fail.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from nat_app.control import ControlError, request
from nat_app.decide import COOKIE_BYPASS

OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
CONNECT_TIMEOUT_S = 20.0
LOCK_PATH = "/run/natlab/testbed.lock"
SUN_PATH_MAX = 107  # bytes of a unix socket path (sockaddr_un.sun_path is 108 with the NUL)


class TestbedError(RuntimeError):
    """The testbed could not come up, or a request needs what this testbed has not (a controller)."""

    __test__ = False  # not a pytest class, despite the name


def ensure_ovs() -> None:
    """Start Open vSwitch (userspace datapath needs no kernel module) if it is not running."""
    if shutil.which("ovs-vsctl") is None:
        raise TestbedError("Open vSwitch is not installed: run `make setup` (apt-get install openvswitch-switch)")
    if subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True).returncode == 0:
        return
    subprocess.run([OVS_CTL, "start", "--system-id=random", "--no-monitor"], capture_output=True)
    if subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True).returncode != 0:
        raise TestbedError(f"Open vSwitch did not start ({OVS_CTL} start)")


def require_root() -> None:
    if os.geteuid() != 0:
        raise TestbedError("the testbed needs root (network namespaces, Open vSwitch): run with sudo")


class TestbedLock:
    """One testbed per machine: switch and interface names (s1, r1, h1-eth0) are global.

    ``wait`` seconds to wait for another testbed to finish; default
    $NATLAB_TESTBED_WAIT, else 0 (fail at once with a clear message).
    """

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, wait: float | None = None) -> None:
        self.wait = float(os.environ.get("NATLAB_TESTBED_WAIT", 0)) if wait is None else wait
        self._fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    raise TestbedError(f"another natlab testbed is running (pid {holder}); stop it first") from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def natlab_script() -> str:
    """The installed ``natlab`` console script beside this interpreter (a venv's bin/): what the
    controller runs as and what the hosts find on their PATH. No source checkout needed."""
    return str(Path(sys.executable).with_name("natlab"))


@dataclass
class ControllerProcess:
    """A ``natlab controller`` child process with its own log and control socket."""

    workdir: Path
    globals: int = 2
    port: int = 6653
    extra_args: list[str] = field(default_factory=list)
    socket_path: str | None = None
    proc: subprocess.Popen | None = None
    persistent: bool = True  # a state database in the workdir (False: --state none)

    @property
    def log(self) -> Path:
        return self.workdir / "controller.log"

    @property
    def state_path(self) -> Path:
        return self.workdir / "state.db"

    @property
    def control_socket(self) -> str:
        """The socket in the workdir, unless that path is too long for bind() (pytest's deep,
        numbered temporary folders reach 108 bytes): then a short one named by the OpenFlow port."""
        if self.socket_path:
            return self.socket_path
        path = str(self.workdir / "controller.sock")
        if len(path.encode()) <= SUN_PATH_MAX:
            return path
        return os.path.join(os.path.dirname(LOCK_PATH), f"controller-{self.port}.sock")

    def start(self) -> None:
        cmd = [natlab_script(), "controller", "--globals", str(self.globals),
               "--listen-port", str(self.port), "--control-socket", self.control_socket,
               "--log", str(self.log), "--state", str(self.state_path) if self.persistent else "none",
               *self.extra_args]
        with open(self.workdir / "controller.stderr", "ab") as stderr:  # a restart appends
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                         start_new_session=True)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TestbedError(f"natlab controller exited with {self.proc.returncode}; see {self.log}")
            try:
                request(self.control_socket, "table", timeout=1)
                return
            except ControlError:
                time.sleep(0.1)
        raise TestbedError(f"natlab controller did not open {self.control_socket} within {CONNECT_TIMEOUT_S}s")

    def restart(self, kill: bool = True, lose_state: bool = False) -> None:
        """Stop the controller (SIGKILL: no chance to tidy up, as in a crash), optionally delete its
        state database, start it again and wait until r1 is reconnected and reconciled."""
        if kill and self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
        else:
            self.stop()
        if lose_state:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.state_path}{suffix}")
        self.start()
        self.wait_ready()

    def wait_ready(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Until r1 is connected and its flows reconciled with the controller's state, and s1 (SAVI) too."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            table = self.ask("table")
            if table.get("ready") and table.get("s1_ready"):
                return
            time.sleep(0.1)
        raise TestbedError(f"r1 and s1 did not connect to the controller and reconcile within {timeout}s; "
                           f"see {self.log}")

    def ask(self, op: str, **args) -> dict:
        return request(self.control_socket, op, **args)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        if not self.socket_path:  # ours; the controller unlinks it itself unless killed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.control_socket)

    def problems(self) -> list[str]:
        """Lines of the controller log that show an exception or an OpenFlow error."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        bad = [line for line in text.splitlines() if "Traceback" in line or " ERROR " in line]
        stderr = self.workdir / "controller.stderr"
        if stderr.exists() and "Traceback" in stderr.read_text(errors="replace"):
            bad.append(f"Traceback in {stderr}")
        return bad


class Testbed:
    """The whole testbed. Parameters as the topology: clients, servers, globals, bw, nat.

    ``nat="extensible"`` (the default): r1 is the OpenFlow switch driven by a
    ``natlab controller`` process. ``nat="classic"``: r1 is a masquerading Linux
    router, ``controller`` is None, and ``table()`` / ``dump_flows()`` raise.
    """

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, clients: int = 3, servers: int = 2, globals: int = 2, bw: float | None = None,
                 workdir: str | Path | None = None, controller_args: list[str] | None = None,
                 control_socket: str | None = None, log_level: str = "warning", wait_for_lock: float | None = None,
                 nat: str = "extensible") -> None:
        check_nat(nat, controller_args, control_socket)
        self.nat = nat
        self.params = {"clients": clients, "servers": servers, "globals": globals, "bw": bw, "nat": nat}
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="natlab-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.controller: ControllerProcess | None = None
        if nat == "extensible":
            self.controller = ControllerProcess(self.workdir, globals=globals, port=free_tcp_port(),
                                                extra_args=controller_args or [], socket_path=control_socket)
        self.net: Any = None  # a Mininet network while up (Mininet is untyped)
        self.lock = TestbedLock(wait_for_lock)
        self.had_the_lock = False  # False: start() never got past the queue (interrupted, or timed out waiting)
        self.log_level = log_level  # Mininet's; the CLI prints command output at "output" or below

    def __enter__(self) -> Testbed:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        require_root()
        ensure_ovs()
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.node import RemoteController

        from topo.natlab import NatlabHost, NatlabTopo

        setLogLevel(self.log_level)
        venv_bin = str(Path(natlab_script()).parent)  # hosts inherit PATH: `h1 natlab lease ...` works
        if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
        self.lock.acquire()
        self.had_the_lock = True
        try:
            controller = None  # classic: s1 and s2 are standalone bridges, r1 a host
            if self.controller is not None:
                self.controller.start()
                controller = partial(RemoteController, ip="127.0.0.1", port=self.controller.port)
            self.net = Mininet(
                topo=NatlabTopo(**self.params), host=NatlabHost, switch=switch_class(),
                controller=controller, autoSetMacs=True, waitConnected=False)
            self.net.start()
            check_bridges(self.net.switches)
            if self.controller is not None:
                # r1 retries a lost controller within 1 s (OVS backs off up to 8 s by default): a restarted
                # controller gets r1 back at once.
                subprocess.run(["ovs-vsctl", "--timeout=5", "set", "controller", "r1", "max_backoff=1000"],
                               check=True, capture_output=True)
                self._wait_connected(self.controller)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _wait_connected(controller: ControllerProcess) -> None:
        controller.wait_ready()

    def stop(self) -> None:
        try:
            if self.net is not None:
                controllers = list(self.net.controllers)
                shells = [n.shell for n in (*self.net.hosts, *self.net.switches, *controllers) if n.shell]
                self.net.stop()
                for c in controllers:  # RemoteController.stop() leaves its shell running
                    c.terminate()
                _reap(shells)
                self.net = None
        finally:
            if self.controller is not None:
                self.controller.stop()
            self.lock.release()

    def host(self, name: str):
        return self.net.get(name)

    def table(self) -> dict:
        return self._controller("table()").ask("table")

    def dump_flows(self) -> str:
        self._controller("dump_flows()")
        return self._ofctl("dump-flows")

    def set_bypass(self, on: bool, timeout: float = 5.0) -> None:
        """Make r1 a plain L2 switch (or a NAT again) and wait until its datapath switches that way.

        The controller's answer means the flow-mods left, not that r1 applied them; and on OVS 3.1's
        userspace datapath, wide megaflows cached before (``in_port(2),tcp_flags(+syn) actions:1``)
        survive ``revalidator/wait`` and switched SYN-ACKs untranslated for seconds after the bypass
        flows were gone. So: wait for the table, then drop the datapath's cached flows."""
        self._controller("set_bypass()").ask("bypass", on=on)
        cookie = f"cookie={COOKIE_BYPASS:#x}/-1"
        deadline = time.monotonic() + timeout
        while ("priority=" in self._ofctl("dump-flows", cookie)) != on:
            if time.monotonic() > deadline:
                raise TestbedError(f"r1's bypass flows did not {'appear' if on else 'go'} within {timeout} s")
            time.sleep(0.05)
        subprocess.run(["ovs-appctl", "revalidator/purge"], capture_output=True, check=True)

    @staticmethod
    def _ofctl(*args: str) -> str:
        return subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", args[0], "r1", *args[1:]],
                              capture_output=True, text=True).stdout

    def nat_ruleset(self) -> str:
        """The classic r1's nftables ruleset with its counters (what dump_flows is for the extensible NAT)."""
        if self.nat != "classic":
            raise TestbedError(f"nat_ruleset() needs nat='classic'; this testbed has nat={self.nat!r}")
        return self.host("r1").cmd("nft list ruleset")

    def _controller(self, what: str) -> ControllerProcess:
        if self.controller is None:
            raise TestbedError(f"{what}: this testbed has nat={self.nat!r}, whose r1 has no controller "
                               "(a Linux masquerade, RFC 3022); see nat_ruleset()")
        return self.controller


def _reap(shells: list[subprocess.Popen], timeout: float = 5) -> None:
    """Wait until every node's shell has exited: Mininet's terminate() sends SIGHUP and returns (and forgets
    the shell), and a switch stopped by the batch ovs-vsctl (see switch_class) was still a live
    ``mininet:s1`` shell when the next check for leftovers looked. One that outlives ``timeout`` is killed."""
    for shell in shells:
        try:
            shell.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            shell.kill()
            shell.wait(timeout=timeout)


def switch_class() -> type:
    """r1's and s1's switch class: OVS's userspace datapath, OpenFlow 1.3.

    A class, not a ``functools.partial``: Mininet starts every switch whose
    class has ``batchStartup`` with one ovs-vsctl run outside any shell. A
    partial hides it, and each switch's command then goes through its shell's
    terminal, whose 4095-byte line cut s1's (an add-port per client) short
    from 55 clients on: s1 never existed and never connected.
    """
    from mininet.node import OVSSwitch
    from mininet.util import specialClass

    return specialClass(OVSSwitch, defaults={"datapath": "user", "protocols": "OpenFlow13"})


def check_bridges(switches: list[Any]) -> None:
    """Every OVS switch Mininet started exists with all its ports: Mininet ignores a failed ovs-vsctl, and a
    missing s1 otherwise shows only as "s1 did not connect" 20 s later (the controller never hears of it)."""
    for switch in switches:
        if not hasattr(switch, "vsctl"):  # the classic r1 is a host
            continue
        wanted = {intf.name for intf in switch.intfList() if switch.ports[intf]}
        listed = subprocess.run(["ovs-vsctl", "--timeout=5", "list-ports", switch.name], capture_output=True, text=True)
        missing = wanted - set(listed.stdout.split())
        if listed.returncode != 0 or missing:
            raise TestbedError(f"Open vSwitch bridge {switch.name} did not come up whole: "
                               f"{listed.stderr.strip() or f'{len(missing)} of {len(wanted)} ports missing'}")


def check_nat(nat: str, controller_args: list[str] | None, control_socket: str | None) -> None:
    """Refuse an unknown NAT kind, and controller options that a classic NAT would silently ignore."""
    from topo.natlab import NAT_KINDS

    if nat not in NAT_KINDS:
        raise TestbedError(f"nat={nat!r} is not one of {', '.join(NAT_KINDS)}")
    if nat == "classic" and (controller_args or control_socket):
        raise TestbedError(f"nat='classic' has no controller, yet controller_args={controller_args!r}, "
                           f"control_socket={control_socket!r}")
