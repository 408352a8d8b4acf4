"""What the report's header records about the machine a run used.

A verdict is only as good as the setup behind it, so every report names the
kernel, Open vSwitch, os-ken, Python, Mininet and the commit.  Every probe
returns a string and never raises: a missing tool reads "absent".
"""

from __future__ import annotations

import importlib.metadata
import platform
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

ABSENT = "absent"
UNKNOWN = "unknown"
TIMEOUT_S = 10


def _run(argv: Sequence[str], cwd: str | Path | None = None) -> str | None:
    """stdout of a command, stripped; None if it is missing, fails or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except Exception:  # PackageNotFoundError, or broken metadata: never fail the report
        return None


def kernel() -> str:
    """uname -r."""
    try:
        return platform.release() or UNKNOWN
    except Exception:
        return UNKNOWN


def ovs_version() -> str:
    """First line of `ovs-vsctl --version`, e.g. "ovs-vsctl (Open vSwitch) 3.1.0"."""
    out = _run(["ovs-vsctl", "--version"])
    return out.splitlines()[0].strip() if out else ABSENT


def os_ken_version() -> str:
    return _dist_version("os-ken") or ABSENT


def mininet_version() -> str:
    """The installed Python distribution, else `mn --version`."""
    return _dist_version("mininet") or (_run(["mn", "--version"]) or "").strip() or ABSENT


def python_version() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


def git_commit(repo_dir: str | Path) -> str:
    """Short HEAD, "-dirty" when the work tree differs from it; "unknown" outside git.

    Untracked (not ignored) files count as dirty: they can change what ran.
    """
    if shutil.which("git") is None:
        return ABSENT
    head = _run(["git", "rev-parse", "--short", "HEAD"], cwd=repo_dir)
    if not head:
        return UNKNOWN
    status = _run(["git", "status", "--porcelain"], cwd=repo_dir)
    return f"{head}-dirty" if status else head


def hostname() -> str:
    try:
        return socket.gethostname() or UNKNOWN
    except Exception:
        return UNKNOWN


SOURCE_DIR = Path(__file__).resolve().parent.parent  # a checkout's top (for its commit), or site-packages


def collect(repo_dir: str | Path = SOURCE_DIR, argv: Sequence[str] | None = None) -> dict[str, str]:
    """The report's environment header; `argv` defaults to this process's command line.

    `repo_dir` is only asked for its git commit: an installed natlab outside a checkout says "unknown"."""
    try:
        command = shlex.join(sys.argv if argv is None else argv)
    except Exception:
        command = UNKNOWN
    return {
        "kernel": kernel(),
        "ovs": ovs_version(),
        "os-ken": os_ken_version(),
        "mininet": mininet_version(),
        "python": python_version(),
        "commit": git_commit(repo_dir),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hostname": hostname(),
        "command": command,
    }
