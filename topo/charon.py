"""strongSwan's charon running in a Mininet host: start, load, wait for its CHILD_SA, stop clean.

:mod:`topo.strongswan` writes charon's files; this module is the shell that runs them in a host (the
live tests, the conformance scenarios and ``natlab bench compare`` share it, so there is one way to
start a peer nobody here wrote). Debian 12's charon 5.9.8 uses ``kernel-libipsec`` here (no kernel
ESP): it only installs UDP-encapsulated tunnel-mode SAs (ENVIRONMENT.md, "strongSwan in a Mininet
host"). Tunnel selectors name addresses put on ``lo`` (:data:`INNER`), so that libipsec's routes
into ``ipsec0`` never cover the IKE peers themselves.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from netwire.plan import client_ip, server_ip
from topo.strongswan import Charon, Peering

INNER_NET = "10.99.0.0/16"  # tunnel-mode inner addresses on lo; in no network of the plan
INNER = {"h1": "10.99.1.1", "srv1": "10.99.2.2"}
IDS = {"h1": "h1.natlab", "srv1": "srv1.natlab"}


class CharonError(RuntimeError):
    """charon did not start, load its connection, or left its TUN device behind."""


def inner_addresses(*hosts) -> None:
    """Each host's :data:`INNER` address on its ``lo`` (the tunnel's selectors)."""
    for host in hosts:
        host.cmd(f"ip addr add {INNER[host.name]}/32 dev lo")


def peering(host_name: str, psk: str, *, initiator: bool, esp: str = "aes128gcm16", mode: str = "tunnel",
            ah: str = "") -> Peering:
    """The swanctl connection of charon in ``host_name`` (h1 or srv1) to the other one; srv1 answers %any."""
    other = "srv1" if host_name == "h1" else "h1"
    address = {"h1": client_ip(1), "srv1": server_ip(1)}
    remote = address[other] if initiator else "%any"
    return Peering(address[host_name], remote, IDS[host_name], IDS[other], psk, esp=esp, mode=mode, ah=ah,
                   local_ts=(f"{INNER[host_name]}/32",), remote_ts=(f"{INNER[other]}/32",))


@contextmanager
def charon_in(host, folder: Path, peering: Peering, start_timeout: float = 10) -> Iterator[tuple[Charon, int]]:
    """charon in ``host`` with its own /run and its connection loaded; yields (files, pid). SIGTERM after."""
    charon = Charon(folder)
    charon.write(peering)
    proc = host.popen(charon.command(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + start_timeout
        while not charon.vici_path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise CharonError(f"charon did not start in {host.name}: {tail(charon.log)}")
            time.sleep(0.1)
        loaded = host.cmd(shlex.join(charon.load()) + " 2>&1")
        if "loaded connection 'natlab'" not in loaded:
            raise CharonError(f"charon in {host.name} did not load its connection: {loaded[-500:]}")
        yield charon, proc.pid  # the popen PID is charon's: unshare and sh exec it
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    if "ipsec0" in host.cmd("ip -o link"):
        raise CharonError(f"charon left its TUN device in {host.name}")


def initiate(host, charon: Charon, timeout: int = 10) -> str:
    """``swanctl --initiate`` of the child ``natlab``; swanctl's output (it says "initiate completed successfully")."""
    return host.cmd(shlex.join(charon.swanctl("--initiate", "--child", "natlab", "--timeout", str(timeout)))
                    + " 2>&1")


def installed_sas(host, charon: Charon, timeout: float = 10) -> str:
    """charon's ``--list-sas`` once it shows an INSTALLED CHILD_SA (or what it shows at ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        sas = host.cmd(shlex.join(charon.swanctl("--list-sas")) + " 2>/dev/null")
        if "INSTALLED" in sas or time.monotonic() > deadline:
            return sas
        time.sleep(0.2)


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"
