"""The environment header: every probe answers with a string and never raises."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
from datetime import datetime

import pytest

from conformance import environment

KEYS = ["kernel", "ovs", "os-ken", "mininet", "python", "commit", "date", "hostname", "command"]


def test_collect_gives_every_key_as_a_string(tmp_path):
    env = environment.collect(tmp_path, argv=["natlab", "demo", "--clients", "3"])
    assert list(env) == KEYS
    assert all(isinstance(v, str) and v for v in env.values())
    assert env["command"] == "natlab demo --clients 3"
    assert env["commit"] == "unknown"  # tmp_path is not a git work tree
    assert datetime.fromisoformat(env["date"]).utcoffset().total_seconds() == 0


def test_absent_tools_read_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no ovs-vsctl, git or mn here

    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", no_dist)
    env = environment.collect(tmp_path, argv=[])
    assert (env["ovs"], env["os-ken"], env["mininet"], env["commit"]) == ("absent",) * 4


@pytest.mark.parametrize(
    "error", [OSError("exec format error"), subprocess.TimeoutExpired("ovs-vsctl", 10), PermissionError()]
)
def test_a_probe_that_breaks_does_not_raise(monkeypatch, tmp_path, error):
    def boom(*a, **kw):
        raise error

    monkeypatch.setattr(subprocess, "run", boom)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    env = environment.collect(tmp_path, argv=[])
    assert env["ovs"] == "absent" and env["commit"] == "unknown"


def test_failing_command_reads_absent(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/bin/false")
    monkeypatch.setattr(
        subprocess, "run", lambda *a, **kw: subprocess.CompletedProcess(a, 1, stdout="junk", stderr="no")
    )
    assert environment.ovs_version() == "absent"


def test_ovs_version_is_the_first_line(monkeypatch):
    out = "ovs-vsctl (Open vSwitch) 3.1.0\nDB Schema 8.3.1\n"
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: subprocess.CompletedProcess(a, 0, stdout=out))
    assert environment.ovs_version() == "ovs-vsctl (Open vSwitch) 3.1.0"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_marks_a_dirty_tree(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)  # fmt: skip

    git("init", "-q")
    (tmp_path / "f.txt").write_text("one\n")
    git("add", "f.txt")
    git("commit", "-q", "-m", "one")
    clean = environment.git_commit(tmp_path)
    assert clean != "unknown" and not clean.endswith("-dirty")
    (tmp_path / "f.txt").write_text("two\n")
    assert environment.git_commit(tmp_path) == f"{clean}-dirty"
    git("commit", "-q", "-am", "two")
    (tmp_path / "new.py").write_text("")  # untracked source also changes what runs
    assert environment.git_commit(tmp_path).endswith("-dirty")
