"""Live-testbed fixtures: real OVS, a real controller process, Mininet hosts.

Privileged tests skip with a reason when not root; in CI (root) they run.
A testbed's teardown fails the test on any controller exception or OpenFlow
error, dumps the flows when a test failed, and checks nothing is left behind.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from topo.testbed import Testbed, TestbedLock

NOT_ROOT = os.geteuid() != 0
# Testbeds are one per machine (topo.testbed.TestbedLock); tests queue for it, also in subprocesses.
os.environ.setdefault("NATLAB_TESTBED_WAIT", "900")
pytestmark = pytest.mark.testbed


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/testbed" in str(item.fspath) and NOT_ROOT:
            item.add_marker(pytest.mark.skip(reason="needs root for network namespaces and Open vSwitch"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def bridges() -> set[str]:
    out = subprocess.run(["ovs-vsctl", "--timeout=5", "list-br"], capture_output=True, text=True).stdout
    return set(out.split())


def leftovers(patience: float = 3.0, lock_held: bool = False) -> list[str]:
    """Bridges and processes of ours still there (exiting processes get a moment).

    Checked under the testbed lock, so a testbed another process starts right
    after ours stopped (a developer's second run) is never taken for our leftovers.
    ``lock_held``: the caller holds it already (a second flock from this process
    would wait for itself).
    """
    if lock_held:
        return _leftovers(patience)
    lock = TestbedLock()
    lock.acquire()
    try:
        return _leftovers(patience)
    finally:
        lock.release()


def _leftovers(patience: float) -> list[str]:
    deadline = time.monotonic() + patience
    while True:
        found = [f"bridge {b}" for b in bridges() & {"s1", "s2", "r1"}]
        procs = subprocess.run(["pgrep", "-af", "mininet:|natlab controller"], capture_output=True, text=True)
        found += [f"process {line}" for line in procs.stdout.splitlines() if "pgrep" not in line]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.fixture
def make_testbed(request, tmp_path):
    """Build testbeds with parameters; each is torn down and checked after the test."""
    made: list[Testbed] = []

    def make(**params) -> Testbed:
        tb = Testbed(workdir=tmp_path / f"testbed{len(made)}", **params)
        made.append(tb)
        tb.start()
        return tb

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    problems = []
    for tb in made:
        if failed and tb.net is not None:
            state = tb.dump_flows() if tb.controller else tb.nat_ruleset()
            print(f"\n--- r1 ({tb.nat} NAT) at failure ---\n{state}")
        tb.stop()
        problems += tb.controller.problems() if tb.controller else []
    # A test interrupted (Ctrl-C) or timed out while queueing for the testbed built nothing: checking for
    # leftovers would queue again, behind the other testbed, and make Ctrl-C look ignored.
    left = leftovers() if any(tb.had_the_lock for tb in made) else []
    assert not problems, f"controller logged exceptions or OpenFlow errors: {problems}"
    assert not left, f"left behind after teardown: {left}"


@pytest.fixture
def testbed(make_testbed) -> Testbed:
    return make_testbed(clients=3, servers=2, globals=2)
