"""The FTP scenario's judges can fail: each is fed evidence without its behaviour and must fail, and nothing
passes on empty evidence (the rule of tests/unit/test_judges_fail.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance import ftp_apps
from conformance.scenarios import ftp
from conformance.scenarios.ftp import FtpRun, _tshark_checks, judge_in_alg, judge_out_alg

GLOBAL, PRIVATE = "203.0.113.1", "10.0.0.1"


def passed(checks) -> bool:
    return all(ok for ok, _ in checks)


def log_line(ip: str, port: int, code: int = 200, verb: str = "PORT") -> str:
    return f"2026-12-03 00:00:00,000 INFO {GLOBAL}:40001-[anonymous] {verb} {ip}:{port} {code}\n"


@pytest.fixture
def run(tmp_path: Path) -> FtpRun:
    """A run where everything worked: files whole, one PORT per active transfer to the global IP."""
    group = ftp.members(1)
    root, folder = tmp_path / "root", tmp_path / "clients"
    ftp_apps.make_files(root, folder, ["h1"], size=1000)
    transfers = ftp_apps.plan("h1", ("curl",))
    for t in transfers:
        if t.op == "RETR":
            (folder / "h1" / f"{t.key}.got").write_bytes((root / t.name).read_bytes())
        else:
            (root / "upload" / t.name).write_bytes((folder / "h1" / "upload.bin").read_bytes())
    log = tmp_path / "pyftpdlib.log"
    log.write_text("".join(log_line(GLOBAL, group[0].ports[0] + i) for i, t in enumerate(transfers) if t.active))
    return FtpRun(transfers, root, folder, log, group)


def test_the_judges_pass_what_worked(run):
    assert passed(judge_out_alg(run, GLOBAL)) and passed(judge_in_alg(run))


def test_out_alg_fails_when_the_server_refused_the_private_address(run):
    run.log.write_text(run.log.read_text() + "2026-12-03 WARNING 203.0.113.1:40009-[anonymous] Rejected data "
                                              f"connection to foreign address {PRIVATE}:45000.\n")
    assert not passed(judge_out_alg(run, GLOBAL))


def test_out_alg_fails_for_a_port_outside_the_block_or_another_address_or_an_empty_log(run):
    text = run.log.read_text()
    run.log.write_text(text + log_line(GLOBAL, 33000))
    assert not passed(judge_out_alg(run, GLOBAL))
    run.log.write_text(text.replace(f" {GLOBAL}:2", " 203.0.113.9:2"))
    assert not passed(judge_out_alg(run, GLOBAL))
    run.log.write_text("")
    assert not passed(judge_out_alg(run, GLOBAL))


@pytest.mark.parametrize(("rows", "why"), [
    ([{"command": "PORT", "arg": "10,0,0,1,175,200"}], "private address"),
    ([{"command": "EPRT", "arg": "|1|10.0.0.1|45000|"}], "private address"),
    ([{"command": "PORT", "arg": "203,0,113,1,78,32"}, {"lost": "1", "stream": "3"}], "a gap"),
    ([{"command": "PORT", "arg": "203,0,113,1,78,32"}, {"lost": "1", "stream": "3"}, {"acked_unseen": "1",
                                                                                      "stream": "4"}], "a gap"),
    ([{"command": "PORT", "arg": "203,0,113,1,78,32", "checksum": "0"}], "bad checksum"),
    ([], "nothing seen"),
])
def test_tshark_checks_fail_on_a_private_address_a_gap_a_bad_checksum_or_nothing(rows, why):
    assert not passed(_tshark_checks(rows, GLOBAL)), why
    good = [{"command": "PORT", "arg": "203,0,113,1,78,32", "checksum": "1"},
            {"command": "EPRT", "arg": "|1|203.0.113.1|20001|"},
            {"lost": "1", "stream": "7"}, {"acked_unseen": "1", "stream": "7"}]  # tcpdump missed it, TCP did not
    assert passed(_tshark_checks(good, GLOBAL))


def test_in_alg_fails_when_an_active_file_is_missing_or_altered_or_nothing_was_active(run):
    active_retr = next(t for t in run.transfers if t.active and t.op == "RETR")
    got = run.folder / "h1" / f"{active_retr.key}.got"
    got.write_bytes(got.read_bytes()[:-1] + b"?")
    assert not passed(judge_in_alg(run))
    got.unlink()
    assert not passed(judge_in_alg(run))
    run.transfers = [t for t in run.transfers if not t.active]
    assert not passed(judge_in_alg(run))
