"""CHILD_SA rekeying with PFS (RFC 7296 sections 1.3.1, 2.17) against strongSwan's charon 5.9.8, both ways.

natlab's initiator on h1, charon answering on srv1, both configured with
``aes128gcm16-ecp256`` for the CHILD_SA: charon rekeys the CHILD_SA first
(``swanctl --rekey``: its KEi, natlab's responder side), natlab rekeys it
next (its ``child_rekey`` timer: natlab's KEi, charon's responder side).
Judged by charon itself (``swanctl --list-sas`` prints the CHILD_SA's DH group
only when the CHILD_SA was keyed with one; the IKE_AUTH CHILD_SA, which has no
KE, is the control that shows none), by tshark decrypting every CREATE_CHILD_SA
with natlab's key table and finding a KE payload of group 19 in each, and by
the IKE SA carrying on afterwards (natlab's Delete at the end is charon's to
take). CHILD_SA data with libipsec needs UDP encapsulation (NAT-T's issue);
traffic across PFS rekeys is the agents' test (test_ike_agents_live.py).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

from client_agent.ike.registry import DhGroup, ExchangeType
from conformance.bench import PlainForwarding
from conformance.evidence import captures
from tests.testbed.test_ike_strongswan_live import (
    H1,
    H1_INNER,
    PSK,
    SRV1,
    SRV1_INNER,
    _tail,
    charon_in,
    events,
    inner_addresses,
    installed_sas,
    natlab_ike,
)
from topo.strongswan import Charon, Peering

PFS_ESP = "aes128gcm16-ecp256"
PFS_SUITE = "ESP:AES_GCM_16-128/ECP_256"  # swanctl --list-sas: encryption/DH group of a PFS CHILD_SA


def established_children(charon: Charon) -> int:
    """CHILD_SAs charon logged as established (libipsec logs a rekeyed one twice: inbound, then outbound)."""
    log = charon.log.read_text(errors="replace")
    return len(set(re.findall(r"CHILD_SA natlab\{(\d+)\} established with SPIs", log)))


def wait_children(charon: Charon, count: int, timeout: float = 10) -> None:
    """Until charon's log shows ``count`` CHILD_SAs established (the first one and each rekey's)."""
    deadline = time.monotonic() + timeout
    while established_children(charon) < count:
        assert time.monotonic() < deadline, f"{count} CHILD_SAs not established: {_tail(charon.log)}"
        time.sleep(0.1)


def installed(sas: str) -> list[str]:
    return [line.strip() for line in sas.splitlines() if "INSTALLED" in line]


def create_child_groups(pcap: Path, keys: Path) -> list[tuple[str, str]]:
    """(exchange type, KE group) of every CREATE_CHILD_SA message on ``pcap``, decrypted with natlab's keys."""
    result = subprocess.run(["tshark", "-n", "-r", str(pcap), "-T", "fields", "-e", "isakmp.exchangetype",
                             "-e", "isakmp.key_exchange.dh_group", "-Y", "isakmp"], capture_output=True, text=True,
                            timeout=60, env={"WIRESHARK_CONFIG_DIR": str(keys), "PATH": "/usr/bin:/bin"})
    rows = [tuple((line.split("\t") + [""])[:2]) for line in result.stdout.splitlines()]
    return [(str(kind), str(group)) for kind, group in rows if kind == str(int(ExchangeType.CREATE_CHILD_SA))]


def test_child_sa_rekeys_with_pfs_both_ways_against_strongswan(make_testbed, tmp_path: Path) -> None:
    tb = make_testbed(clients=1, servers=1, globals=1)
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    inner_addresses(h1, srv1)
    keys = tmp_path / "natlab-keys"
    peering = Peering(SRV1, "%any", "srv1.natlab", "h1.natlab", PSK, esp=PFS_ESP, local_ts=(f"{SRV1_INNER}/32",),
                      remote_ts=(f"{H1_INNER}/32",))
    with ExitStack() as stack:
        stack.enter_context(PlainForwarding(tb, h1, srv1))
        charon = stack.enter_context(charon_in(srv1, tmp_path / "charon", peering))
        with captures([(srv1, "srv1-eth0")], tmp_path / "pcap") as pcaps:
            proc = natlab_ike(h1, "initiate", keys, "--local", H1, "--remote", SRV1, "--id", "h1.natlab",
                              "--remote-id", "srv1.natlab", "--local-ts", f"{H1_INNER}/32", "--remote-ts",
                              f"{SRV1_INNER}/32", "--esp", PFS_ESP, "--child-rekey", "3", "--hold", "5")
            first = installed(installed_sas(srv1, charon))
            by_charon = srv1.cmd(shlex.join(charon.swanctl("--rekey", "--child", "natlab")) + " 2>&1")
            after_charon = installed(srv1.cmd(shlex.join(charon.swanctl("--list-sas")) + " 2>/dev/null"))
            wait_children(charon, 3)  # natlab's own rekey, 3 s after charon's
            after_natlab = installed(srv1.cmd(shlex.join(charon.swanctl("--list-sas")) + " 2>/dev/null"))
            seen = events(proc)
    log = charon.log.read_text(errors="replace")
    assert "rekey completed successfully" in by_charon, by_charon[-2000:]
    assert first and not any(PFS_SUITE in line for line in first), first  # IKE_AUTH: no KE, no group (control)
    assert len(after_charon) == 1 and PFS_SUITE in after_charon[0], after_charon
    assert len(after_natlab) == 1 and PFS_SUITE in after_natlab[0] and after_natlab != after_charon, after_natlab
    assert "selected proposal: ESP:AES_GCM_16_128/ECP_256/NO_EXT_SEQ" in log, _tail(charon.log)
    assert not re.search(r"(?i)rekey\S* failed|INVALID_KE_PAYLOAD|NO_PROPOSAL_CHOSEN", log), _tail(charon.log)
    children = [e for e in seen if e["event"] == "ChildEstablished"]
    assert [e["pfs"] for e in children] == [None, DhGroup.ECP_256, DhGroup.ECP_256], seen
    groups = create_child_groups(pcaps["srv1-eth0"], keys)
    assert len(groups) == 4 and {g for _, g in groups} == {str(int(DhGroup.ECP_256))}, groups
    assert "received DELETE for IKE_SA" in log and seen[-1] == {"event": "IkeClosed", "reason": "deleted"}, seen
