"""Receive coalescing against the real kernel: a super-segment goes up the stack as one packet, and its checksum,
derived from the segments' own, is verified there (a bad segment gets it dropped, counted as a checksum error).

Needs root for a network namespace and a TUN device; no OVS, no testbed: the namespace is the test's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def namespace():
    name = f"natlab-coal-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=True)
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def peer(namespace: str, *args: str) -> dict:
    out = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-m", "tests.testbed.coalesce_peer", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_kernel_takes_three_segments_in_one_frame_and_the_application_gets_them_all(namespace):
    result = peer(namespace)
    assert result == {"frames": [3], "received": 3000, "checksum_errors": 0, "segments_in": 1}


def test_a_bad_segment_makes_the_kernel_drop_its_super_segment_as_a_checksum_error(namespace):
    result = peer(namespace, "corrupt")
    assert result == {"frames": [3], "received": 0, "checksum_errors": 1, "segments_in": 1}
