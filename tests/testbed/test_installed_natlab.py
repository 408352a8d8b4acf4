"""``pip install .`` into a fresh venv outside the checkout gives a working ``natlab`` (issue 11): the
console script, the example configs as package data, and a testbed whose controller and hosts run the
installed command, with no PYTHONPATH and no source tree (the commands run from an empty folder)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.testbed.conftest import leftovers

ROOT = Path(__file__).resolve().parents[2]


WAIT = os.environ.get("NATLAB_TESTBED_WAIT", "900")  # how long `natlab up` queues for the testbed lock


def _run(argv: list[str], cwd: Path, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
    """Run an installed command from ``cwd`` with a bare environment (plus ``extra``); on timeout SIGTERM
    it, so that a testbed it brought up is torn down (SIGKILL would leave the controller and the bridges
    behind)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(cwd),  # no PYTHONPATH, no venv on PATH
           "NATLAB_TESTBED_WAIT": WAIT, **extra}
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"{argv} took over {timeout} s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv holding ``pip install .`` of this checkout (not editable)."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # --no-compile: Python compiles what it imports anyway; byte-compiling pandas, numpy and matplotlib
    # up front was half of this step (60 s -> 34 s). pip's own cache (what `make setup` fetched and built),
    # not a cache in the empty folder: 34 s -> 27 s.
    done = _run([str(venv / "bin" / "pip"), "install", "-q", "--no-compile", str(ROOT)], cwd=venv.parent,
                timeout=900, PIP_CACHE_DIR=str(Path.home() / ".cache" / "pip"))
    assert done.returncode == 0, done.stderr[-3000:]
    return venv / "bin"


def test_installed_natlab_controller_prints_its_help(installed: Path, tmp_path: Path) -> None:
    done = _run([str(installed / "natlab"), "controller", "--help"], cwd=tmp_path)
    assert done.returncode == 0 and "--listen-port" in done.stdout, done.stderr


def test_installed_natlab_agent_checks_a_packaged_example(installed: Path, tmp_path: Path) -> None:
    find = _run([str(installed / "python"), "-c", "from client_agent.agent_config import examples; "
                 "print(examples() / 'esp-transport-nat-h1.toml')"], cwd=tmp_path)
    example = Path(find.stdout.strip())
    assert ROOT not in example.parents and example.is_file(), (find.stdout, find.stderr)
    done = _run([str(installed / "natlab"), "agent", "--check", "--config", str(example)], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_installed_natlab_up_runs_a_script_and_leaves_nothing_behind(installed: Path, tmp_path: Path) -> None:
    script = tmp_path / "commands"
    script.write_text(f"h1 ping -c 1 203.0.113.100\nh1 natlab lease define esp --json --state {tmp_path / 'l.json'}\n"
                      "sh natlab table\n")
    done = _run([str(installed / "natlab"), "up", "--clients", "2", "--workdir", str(tmp_path / "run"),
                 "--script", str(script)], cwd=tmp_path, timeout=float(WAIT) + 300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "1 received" in out and "NAT-ALG" in out and "10.0.0.1" in out, out
    assert '"result": "SUCCESS"' in out, out  # the lease command found the installed natlab on h1's PATH
    assert not leftovers()
