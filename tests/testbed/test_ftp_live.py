"""Real FTP across the NAT (issue 13), through the conformance scenarios of conformance/scenarios/ftp.py.

Inside IPsec (the client's FTP ALG, steps 813 and 822), every matrix cell,
and in cleartext (the NAT's own FTP ALG, NAT-AUTO), three clients behind one
global IP at once run curl, ftplib and Debian's ``ftp``, actively and
passively, moving files of several MB both ways. The judges are the
scenarios': SHA-256 at both ends, pyftpdlib's log of each data connection's
address, tshark's FTP dissector on the peer's decrypted capture. The control:
the clients' FTP ALG off fails exactly OUT-ALG and IN-ALG (the server refuses
the private address), passive FTP still works.
"""

from __future__ import annotations

import pytest

from conformance import ftp_apps
from conformance.context import Context
from conformance.matrix import CELLS
from conformance.scenarios import ftp

# what `natlab demo` (test_launchers) does not run: the other direction of every program and mode
THE_REST = tuple(sorted({(t.program, t.mode, t.op) for t in ftp_apps.plan("h")} - set(ftp_apps.QUICK)))


def _failures(results) -> list[str]:
    return [f"{r.behaviour} {r.scenario}: {r.reason}" for r in results if r.verdict != "pass"]


@pytest.mark.parametrize("cell", [CELLS[0]], ids=[CELLS[0].name])
def test_ftp_inside_ipsec_three_clients_behind_one_global_ip_active_and_passive(make_testbed, tmp_path, cell):
    """With the demo's quick plan (one transfer of each kind in every cell, run by test_launchers), the
    whole plan in ESP transport: every program and mode, both ways."""
    tb = make_testbed(clients=3, servers=1, globals=1)
    ctx = Context(tb, tmp_path)
    with ctx.recorded(f"ftp-{cell.name}") as rec:
        run = ftp.run_ipsec(ctx, cell, ftp.members(), rec.folder, only=THE_REST)
    results = ftp.cell_results(rec, cell, run)
    assert {r.behaviour for r in results} == {"OUT-ALG", "IN-ALG"}
    assert not _failures(results), "\n".join(_failures(results))
    for status in run.statuses:
        algs = status["nat"]["algs"]
        assert algs.get("ftp:out", 0) > 0 and algs.get("ftp:in", 0) > 0, algs


def test_ftp_in_cleartext_three_clients_through_the_nats_own_ftp_alg(make_testbed, tmp_path):
    tb = make_testbed(clients=3, servers=1, globals=1)
    (result,) = ftp.ftp_cleartext(Context(tb, tmp_path), quick=False)
    assert result.behaviour == "NAT-AUTO" and result.verdict == "pass", result.reason
