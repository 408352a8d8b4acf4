"""coturn's RFC 5780 classifier (nobody here wrote it) through the classic Linux NAT control, which must
classify as what it is. The extensible NAT's ledger, with the same classifier beside its REQ-1, REQ-8 and
REQ-9 rows, is judged by the demo's `behave` scenario (tests/testbed/test_launchers.py runs it once)."""

from __future__ import annotations

import pytest

from conformance import natdiscovery
from conformance.scenarios.behave import discover


@pytest.mark.parametrize("nat", ["classic"])
def test_coturn_classifies_the_classic_linux_nat_as_what_it_is(make_testbed, nat):
    """Linux conntrack masquerade keeps the source port (so the mapping looks endpoint-independent here),
    filters by address and port (a conntrack entry is a 5-tuple), and does not hairpin without rules it
    has not got: the classifier must say so, differing from the extensible NAT where the NAT differs."""
    tb = make_testbed(clients=1, servers=1, globals=1, nat=nat)
    outs = discover(tb.host("h1"), tb.host("srv1"))
    got = natdiscovery.classify(outs["-m"], outs["-f"], outs["-H"])
    assert got == {"mapping": "endpoint-independent", "filtering": "address-and-port-dependent",
                   "hairpinning": "no"}, outs
