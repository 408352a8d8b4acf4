"""One testbed per machine: a second one is refused with the holder's pid, or waits."""

import os

import pytest

from topo import testbed
from topo.testbed import TestbedError, TestbedLock


def test_second_testbed_is_refused_until_the_first_is_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(testbed, "LOCK_PATH", str(tmp_path / "testbed.lock"))
    first = TestbedLock(wait=0)
    first.acquire()
    with pytest.raises(TestbedError, match=f"pid {os.getpid()}"):
        TestbedLock(wait=0.6).acquire()
    first.release()
    second = TestbedLock(wait=0)
    second.acquire()
    second.release()
