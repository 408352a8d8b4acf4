"""Real FTP across the NAT: pyftpdlib on the far end; curl, Python's ftplib and Debian's ``ftp`` on the clients.

Each client host runs a fixed plan of transfers one after the other (the
hosts run theirs at the same time): RETR of a file of several MB and STOR of
another, by every client program, passively and actively, curl in all four
ways (EPSV, PASV, EPRT, PORT). The verdicts are the files' SHA-256 at both
ends and the server's own log (:mod:`conformance.ftp_server`): which address
each active data connection went to, and whether a PORT/EPRT was refused.
"""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from conformance.apps import Service
from netwire.ftp import FTP_CONTROL_PORT

FILE_SIZE = 3 * 1024 * 1024  # several MB: thousands of segments through the ALG's connection and the agents
TIMEOUT_S = 45  # one transfer of a few MB takes seconds; a client left waiting for a data connection is ended
CONNECT_TIMEOUT_S = 15  # a control connection that cannot connect (the classic-NAT control) fails in this time
LISTEN_TIMEOUT_S = 10
CURL_MODES = {"epsv": "--ftp-pasv", "pasv": "--ftp-pasv --disable-epsv", "eprt": "-P -",
              "port": "-P - --disable-eprt"}
ACTIVE = frozenset({"eprt", "port", "active"})
_DATA_LOG = re.compile(r"(?P<peer>[\d.]+):(?P<cport>\d+)-\[[^]]*\] (?P<verb>PORT|EPRT) \[?(?P<ip>[\d.]+)\]?:"
                       r"(?P<port>\d+) (?P<code>\d{3})")


@dataclass(frozen=True)
class Transfer:
    """One file moved by one client program in one mode."""

    host: str
    program: str  # curl | ftplib | ftp
    mode: str  # curl: epsv pasv eprt port; ftplib and ftp: active passive
    op: str  # RETR | STOR
    name: str  # the file's name on the server (STOR: under upload/)

    @property
    def key(self) -> str:
        return f"{self.host}-{self.program}-{self.mode}-{self.op.lower()}"

    @property
    def active(self) -> bool:
        return self.mode in ACTIVE


# one of each kind, for the report's matrix (every program, active and passive, both directions)
QUICK = (("curl", "eprt", "RETR"), ("curl", "port", "STOR"), ("curl", "epsv", "STOR"), ("curl", "pasv", "RETR"),
         ("ftplib", "active", "STOR"), ("ftplib", "passive", "RETR"), ("ftp", "active", "RETR"),
         ("ftp", "passive", "STOR"))


def plan(host: str, programs: tuple[str, ...] = ("curl", "ftplib", "ftp"),
         only: tuple[tuple[str, str, str], ...] | None = None) -> list[Transfer]:
    """Every program, every mode, a RETR and a STOR each; or ``only`` these (program, mode, op)."""
    modes = {"curl": tuple(CURL_MODES), "ftplib": ("active", "passive"), "ftp": ("active", "passive")}
    chosen = only or tuple((p, m, op) for p in programs for m in modes[p] for op in ("RETR", "STOR"))
    return [Transfer(host, p, m, op, "data.bin" if op == "RETR" else f"{host}-{p}-{m}.bin") for p, m, op in chosen]


def make_files(root: Path, folder: Path, hosts: list[str], size: int = FILE_SIZE, seed: int = 13) -> None:
    """The server's file to fetch and each client's file to store, of random bytes."""
    rng = random.Random(seed)
    (root / "upload").mkdir(parents=True, exist_ok=True)
    (root / "data.bin").write_bytes(rng.randbytes(size))
    for host in hosts:
        (folder / host).mkdir(parents=True, exist_ok=True)
        (folder / host / "upload.bin").write_bytes(rng.randbytes(size))


def ftp_server(host, ip: str, root: Path, log: Path, seconds: int = 900) -> Service:
    """pyftpdlib in ``host`` on ``ip``:21, returned once it listens."""
    argv = [sys.executable, "-m", "conformance.ftp_server", "--bind", ip, "--root", str(root), "--log", str(log),
            "--seconds", str(seconds)]
    service = Service(host, argv, settle=0)
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while not host.cmd(f"ss -Hntl 'sport = :{FTP_CONTROL_PORT}'").strip():
        if service.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"pyftpdlib never listened in {host.name}: {log.read_text() if log.exists() else ''}")
        time.sleep(0.05)
    return service


def start(host, transfers: list[Transfer], target: str, folder: Path) -> subprocess.Popen:
    """The plan as one shell script in ``host``, each transfer's exit status into ``<key>.rc``."""
    lines = [_command(t, target, folder / t.host) + f"; echo $? > {folder / t.host / t.key}.rc" for t in transfers]
    return host.popen(["bash", "-c", "\n".join(lines)], cwd=str(folder), stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)


def _command(t: Transfer, target: str, out: Path) -> str:
    got, upload, log = out / f"{t.key}.got", out / "upload.bin", out / f"{t.key}.log"
    if t.program == "curl":
        what = f"-o {got} ftp://{target}/{t.name}" if t.op == "RETR" else f"-T {upload} ftp://{target}/upload/{t.name}"
        return f"timeout {TIMEOUT_S} curl -sS -v --connect-timeout {CONNECT_TIMEOUT_S} --max-time {TIMEOUT_S} " \
               f"{CURL_MODES[t.mode]} {what} 2> {log}"
    if t.program == "ftplib":
        action = f"--get {t.name} --to {got}" if t.op == "RETR" else f"--put {upload} --as {t.name}"
        return f"timeout {TIMEOUT_S} {sys.executable} -m conformance.ftp_client --server {target} --{t.mode} " \
               f"{action} > {log} 2>&1"
    verb = f"get {t.name} {got}" if t.op == "RETR" else f"put {upload} upload/{t.name}"
    flag = "-A" if t.active else "-p"
    return f"printf 'user anonymous natlab@\\nbinary\\n{verb}\\nquit\\n' | timeout {TIMEOUT_S} ftp -n -v {flag} " \
           f"{target} > {log} 2>&1"


def sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def judge(t: Transfer, root: Path, folder: Path) -> str | None:
    """None if the file arrived whole (SHA-256 at both ends), else why not."""
    out = folder / t.host
    if t.op == "RETR":
        sent, got = sha256(root / t.name), sha256(out / f"{t.key}.got")
    else:
        sent, got = sha256(out / "upload.bin"), sha256(root / "upload" / t.name)
    if got is None:
        return f"{t.key}: nothing arrived (exit {_read(out / f'{t.key}.rc')}): {_read(out / f'{t.key}.log')[-300:]}"
    return None if got == sent else f"{t.key}: SHA-256 differs"


def data_connections(log: Path) -> list[dict]:
    """pyftpdlib's account of each PORT/EPRT: the control connection's peer, the address it connected to, the
    reply code (200 connected; 501 refused)."""
    rows = [m.groupdict() for m in _DATA_LOG.finditer(_read(log))]
    refused = re.findall(r"(?P<peer>[\d.]+):(?P<cport>\d+)-\[[^]]*\] .*Rejected data connection to foreign "
                         r"address (?P<ip>[\d.]+):(?P<port>\d+)", _read(log))
    rows += [{"peer": p, "cport": c, "verb": "?", "ip": ip, "port": port, "code": "501"} for p, c, ip, port in refused]
    return rows


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""
