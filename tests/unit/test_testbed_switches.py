"""The testbed's switches come up whole at any client count the plan allows (no root: Mininet is not started)."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace
from typing import NamedTuple

import pytest
from mininet.node import OVSSwitch

from netwire.plan import MAX_HOSTS
from topo import testbed
from topo.natlab import NatlabTopo
from topo.testbed import TestbedError, check_bridges, switch_class


def test_r1_and_s1_start_in_one_ovs_vsctl_run_outside_any_shell():
    """Mininet sets ``batch`` only for a switch class with batchStartup; without it s1's one command (an
    add-port per client) went through its shell's terminal, cut at 4095 bytes: 55 clients and s1 never existed."""
    cls = switch_class()
    assert issubclass(cls, OVSSwitch) and hasattr(cls, "batchStartup")
    switch = cls("s1", dpid="11", batch=True)
    assert (switch.datapath, switch.protocols, switch.batch) == ("user", "OpenFlow13", True)
    topo = NatlabTopo(clients=MAX_HOSTS)
    assert "cls" not in topo.nodeInfo("s1") and "cls" not in topo.nodeInfo("r1")  # both take the testbed's class


class _Intf(NamedTuple):
    name: str


class _Switch:
    def __init__(self, name: str, ports: int) -> None:
        self.name = name
        self.intfs = [_Intf(f"{name}-eth{i}") for i in range(ports + 1)]
        self.ports = {intf: i for i, intf in enumerate(self.intfs)}  # eth0 stands for lo: port 0, not OVS's

    def intfList(self):  # noqa: N802 (Mininet's name)
        return self.intfs

    def vsctl(self, *args):
        raise AssertionError("not called")


def _ovs(listing: dict[str, list[str]]):
    def run(argv, **kwargs):
        name = argv[-1]
        if name not in listing:
            return subprocess.CompletedProcess(argv, 1, "", f"ovs-vsctl: no bridge named {name}")
        return subprocess.CompletedProcess(argv, 0, "\n".join(listing[name]) + "\n", "")
    return run


def test_a_bridge_that_never_came_up_is_named_at_once(monkeypatch):
    monkeypatch.setattr(testbed.subprocess, "run", _ovs({"r1": ["r1-eth1", "r1-eth2"]}))
    with pytest.raises(TestbedError, match="bridge s1 did not come up whole: ovs-vsctl: no bridge named s1"):
        check_bridges([_Switch("r1", 2), _Switch("s1", 64)])


def test_a_bridge_short_of_ports_is_refused(monkeypatch):
    monkeypatch.setattr(testbed.subprocess, "run", _ovs({"s1": [f"s1-eth{i}" for i in range(1, 60)]}))
    with pytest.raises(TestbedError, match="5 of 64 ports missing"):
        check_bridges([_Switch("s1", 64)])


def test_whole_bridges_and_hosts_pass(monkeypatch):
    monkeypatch.setattr(testbed.subprocess, "run", _ovs({"s1": [f"s1-eth{i}" for i in range(1, 65)]}))
    check_bridges([_Switch("s1", 64), SimpleNamespace(name="r1")])  # the classic r1: a host, no vsctl
