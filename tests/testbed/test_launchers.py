"""The three ways the README starts the testbed, and `natlab demo` / `natlab bench`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from nat_app.control import ControlError, request
from tests.testbed.conftest import leftovers
from topo.testbed import TestbedLock, natlab_script

ROOT = Path(__file__).resolve().parents[2]
NATLAB = [natlab_script()]


def run(argv, timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
    """Run a natlab command; on timeout, SIGTERM it so that it tears its testbed down. The timeout
    counts from the moment it may have the testbed: queueing for the lock (NATLAB_TESTBED_WAIT) is extra."""
    timeout += float(os.environ.get("NATLAB_TESTBED_WAIT", 0))
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"{argv} took over {timeout} s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_mn_custom_line_against_natlab_controller(tmp_path):
    """The README's `sudo .venv/bin/mn --custom topo/natlab.py ...` line, on port 6653."""
    lock = TestbedLock()
    lock.acquire()
    try:
        _mn_custom_line(tmp_path)
    finally:
        lock.release()


def _mn_custom_line(tmp_path):
    sock = str(tmp_path / "c.sock")
    ctl = subprocess.Popen([*NATLAB, "controller", "--control-socket", sock, "--log", str(tmp_path / "c.log"),
                            "--state", str(tmp_path / "state.db")], cwd=ROOT, start_new_session=True)
    try:
        for _ in range(100):
            try:
                request(sock, "table", timeout=1)
                break
            except ControlError:
                time.sleep(0.1)
        script = tmp_path / "post"
        script.write_text("h1 ping -c 2 203.0.113.100\nh3 ping -c 2 203.0.113.101\n"
                          f"sh {natlab_script()} table --json --control-socket {sock} > {tmp_path}/t.json\n"
                          f"sh ovs-vsctl get-fail-mode r1 > {tmp_path}/fail-mode\n")
        mn = str(Path(sys.executable).with_name("mn"))  # the venv's (PyPI Mininet): it can import netwire.plan
        out = run([mn, "--custom", "topo/natlab.py", "--topo", "natlab,clients=3", "--switch", "ovs,datapath=user",
                   "--controller", "remote", "--test", "none", "--post", str(script)])
        assert (out.stdout + out.stderr).count("2 received") == 2, out.stdout + out.stderr
        table = json.loads((tmp_path / "t.json").read_text())
        assert {e["private_ip"] for e in table["entries"]} == {"10.0.0.1", "10.0.0.3"}
        assert (tmp_path / "fail-mode").read_text().strip() == "secure"  # plain mn too: r1 never goes L2
    finally:
        os.killpg(ctl.pid, signal.SIGTERM)
        ctl.wait(timeout=10)
    assert "Traceback" not in (tmp_path / "c.log").read_text()
    assert not leftovers(lock_held=True)  # the test holds the lock: a second flock would wait for itself


def test_natlab_up_runs_the_cli_and_leaves_nothing_behind(tmp_path):
    sock_table = "natlab table"  # the hosts find the console script on their PATH
    script = tmp_path / "commands"
    script.write_text(f"h1 ping -c 1 203.0.113.100\nsh {sock_table}\n")
    out = run([*NATLAB, "up", "--clients", "2", "--workdir", str(tmp_path), "--script", str(script)])
    assert out.returncode == 0, out.stderr
    assert "1 received" in out.stdout + out.stderr  # Mininet prints command output on stderr
    assert "NAT-ALG" in out.stdout and "10.0.0.1" in out.stdout  # natlab table, from inside the CLI
    assert not leftovers()
    assert not Path("/run/natlab/controller.sock").exists()


def test_natlab_up_rejects_bad_parameters():
    out = run([*NATLAB, "up", "--clients", "0"])
    assert out.returncode != 0 and "clients=0" in out.stderr


def test_natlab_demo_writes_the_report(tmp_path):
    """The issue's "done when": every behaviour passes (CL-COOKIE too, since IKE), every claim has a
    verdict, and every control fails as the seed predicts (its verdict is "pass")."""
    out = run([*NATLAB, "demo", "--out", str(tmp_path)], timeout=1800)
    assert "report written" in out.stdout, out.stdout + out.stderr
    behaviours = pd.read_csv(tmp_path / "behaviours.csv").set_index("id")
    failing = {b: v for b, v in behaviours["verdict"].items() if v != "pass"}
    assert not failing, failing
    claims = pd.read_csv(tmp_path / "claims.csv")
    assert sorted(claims["claim"]) == list(range(1, 41)) and set(claims["verdict"]) == {"pass"}, claims
    controls = pd.read_csv(tmp_path / "controls.csv").set_index("id")
    assert controls.loc["CTRL-NOCOMP", "verdict"] == "pass", controls.loc["CTRL-NOCOMP"].to_dict()
    for fault in ("CTRL-NOALG", "CTRL-NOVERIFY", "CTRL-CLASSIC", "CTRL-NONAT"):  # each fails exactly what it removes
        assert controls.loc[fault, "verdict"] == "pass", controls.loc[fault].to_dict()
    assert behaviours["fails_without"].notna().all()  # every behaviour names the variant that makes it fail
    assert (tmp_path / "report.html").read_text().count("NAT-AUTO") >= 1
    plots = {p.name for p in (tmp_path / "plots").glob("*.png")}  # issue 14: the run's own plots
    assert {"verdict-matrix.png", "lease-timeline.png", "path-shares.png"} <= plots, plots
    run_dir = next((tmp_path / "runs").iterdir())
    assert list(run_dir.glob("evidence/nat-auto/*.pcap")) and (run_dir / "controller.log").exists()
    assert list(run_dir.glob("evidence/client-esp-transport/pcap/ipsec0.pcap"))
    assert not leftovers()


def test_natlab_bench_nat_reports_both_paths_and_the_ratio(tmp_path):
    out = run([*NATLAB, "bench", "nat", "--seconds", "1", "--rounds", "1", "--out", str(tmp_path)])
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "bench-nat.json").read_text())
    assert result["median_bps"]["nat"] > 0 and result["median_bps"]["plain"] > 0
    assert result["connections_per_second"]["nat"] > 0 and "ratio" in out.stdout
    assert result["connections_failed"] == {"nat": 0, "plain": 0}, result["connections_failed"]
    assert not leftovers()


def test_natlab_bench_e2e_reports_nat_and_plain_esp_and_the_core(tmp_path):
    out = run([*NATLAB, "bench", "e2e", "--seconds", "1", "--repeat", "1", "--out", str(tmp_path)])
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "bench-e2e.json").read_text())
    assert result["median_bps"]["nat"] > 0 and result["median_bps"]["plain"] > 0
    (nat,), (plain,) = result["iperf3_tcp"]["nat"], result["iperf3_tcp"]["plain"]
    assert nat["nat_path"]["fast_path"] > 0 and nat["nat_path"]["esp_entries"] and not nat["drops"]
    assert plain["nat_path"]["bypass"] > 0 and not plain["drops"]
    assert {row["protocol"] for row in result["core"]} == {"tcp", "udp"} and "share out" in out.stdout
    assert not leftovers()
