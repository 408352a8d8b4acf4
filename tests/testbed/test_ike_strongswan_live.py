"""natlab's IKEv2 against strongSwan's charon 5.9.8, an implementation nobody here wrote, on the live testbed.

Both directions: natlab's initiator (``python -m client_agent.ike_udp``) with
charon as responder, and charon's initiator with natlab's responder; first
with r1 as a plain switch (direct), then with h1 behind the extensible NAT,
its IKE SPI leased as the seed's cookie (FIG. 8 step 801) and NAT detection
computed over the leased global address (claim 8's pre-compensation, for IKE).

Verdicts come from both sides: charon's own log ("IKE_SA ... established",
"authentication of ... successful", and whether it says "remote host is
behind NAT"), natlab's events, and tshark decrypting the IKE exchange on the
peer's wire with the ``ikev2_decryption_table`` natlab wrote. charon's
``kernel-libipsec`` only installs UDP-encapsulated CHILD_SAs (it fakes a NAT):
the tests record what it does with natlab's CHILD_SA proposal; the data path
with strongSwan is NAT-T's (issue 15).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from conformance.bench import PlainForwarding
from conformance.evidence import captures
from topo import charon as charon_shell
from topo.charon import inner_addresses, installed_sas
from topo.charon import tail as _tail
from topo.natlab import client_ip, server_ip
from topo.strongswan import Charon, Peering

H1, SRV1 = client_ip(1), server_ip(1)
PSK = "natlab-interop-psk-0123456789"
# Tunnel-mode selectors on addresses put on lo, so that libipsec's routes never cover the IKE peers themselves.
H1_INNER, SRV1_INNER = charon_shell.INNER["h1"], charon_shell.INNER["srv1"]
TSHARK_FIELDS = ("isakmp.ispi", "isakmp.exchangetype", "isakmp.id.data.fqdn", "ip.src", "udp.srcport")


@contextmanager
def charon_in(host, folder: Path, peering: Peering) -> Iterator[Charon]:
    """charon in ``host`` (topo.charon, the one way to start it), its connection loaded; checked clean after."""
    with charon_shell.charon_in(host, folder, peering) as (started, _pid):
        yield started


def natlab_ike(host, role: str, folder: Path, *args: str, timeout: float = 15):
    """Start natlab's IKE shell in ``host``; its JSON events come out on stdout."""
    argv = [sys.executable, "-m", "client_agent.ike_udp", role, "--psk", PSK, "--keys", str(folder),
            "--timeout", str(timeout), *args]
    return host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def listening(proc) -> None:
    """Until natlab's shell says its sockets are bound (its first line)."""
    line = proc.stdout.readline()
    assert line.startswith('{"event": "Listening"'), line


def events(proc) -> list[dict]:
    out, _ = proc.communicate(timeout=30)
    parsed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    parsed = [e for e in parsed if e["event"] != "Listening"]
    assert parsed, out[-2000:]
    return parsed


def tshark_ike(pcap: Path, keys: Path) -> str:
    """tshark's verbose dissection of the IKE on ``pcap``, decrypting with natlab's key table."""
    result = subprocess.run(["tshark", "-n", "-r", str(pcap), "-V", "-Y", "isakmp"], capture_output=True,
                            text=True, timeout=60, env={"WIRESHARK_CONFIG_DIR": str(keys), "PATH": "/usr/bin:/bin"})
    assert "Error loading table" not in result.stderr, result.stderr
    return result.stdout


def assert_tshark_opens_ike_auth(text: str) -> None:
    """Both IKE_AUTH messages decrypted (both identities inside), every integrity checksum correct."""
    assert "ID_FQDN: h1.natlab" in text and "ID_FQDN: srv1.natlab" in text, text[-3000:]
    checks = re.findall(r"Integrity Checksum Data: .*\[(correct|incorrect)", text)
    assert len(checks) >= 2 and set(checks) == {"correct"}, checks


def peering(initiator_is_h1: bool, charon_host: str) -> Peering:
    mine, theirs = ("srv1.natlab", "h1.natlab") if charon_host == "srv1" else ("h1.natlab", "srv1.natlab")
    local_addr, remote_addr = (SRV1, "%any") if charon_host == "srv1" else (H1, SRV1)
    local_ts, remote_ts = (SRV1_INNER, H1_INNER) if charon_host == "srv1" else (H1_INNER, SRV1_INNER)
    return Peering(local_addr, remote_addr, mine, theirs, PSK, local_ts=(f"{local_ts}/32",),
                   remote_ts=(f"{remote_ts}/32",))


def test_natlab_initiator_establishes_an_ike_sa_with_strongswan_direct(make_testbed, tmp_path: Path) -> None:
    tb = make_testbed(clients=1, servers=1, globals=1)
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    inner_addresses(h1, srv1)
    keys = tmp_path / "natlab-keys"
    with ExitStack() as stack:
        stack.enter_context(PlainForwarding(tb, h1, srv1))
        charon = stack.enter_context(charon_in(srv1, tmp_path / "charon", peering(True, "srv1")))
        with captures([(srv1, "srv1-eth0")], tmp_path / "pcap") as pcaps:
            proc = natlab_ike(h1, "initiate", keys, "--local", H1, "--remote", SRV1, "--id", "h1.natlab",
                              "--remote-id", "srv1.natlab", "--local-ts", f"{H1_INNER}/32", "--remote-ts",
                              f"{SRV1_INNER}/32", "--hold", "5", "--child-rekey", "1.5", "--ike-rekey", "3")
            sas = installed_sas(srv1, charon)
            seen = events(proc)
    log = charon.log.read_text(errors="replace")
    assert seen[0]["event"] == "IkeEstablished" and seen[0]["peer"] == "ID_FQDN:srv1.natlab", seen
    assert "authentication of 'h1.natlab' with pre-shared key successful" in log, _tail(charon.log)
    assert re.search(r"IKE_SA natlab\[\d+\] established between", log), _tail(charon.log)
    assert "faking NAT situation to enforce UDP encapsulation" in log  # libipsec, as ENVIRONMENT.md says
    record_child_outcome(seen, log, sas, tmp_path)
    assert "received DELETE for IKE_SA" in log and seen[-1] == {"event": "IkeClosed", "reason": "deleted"}
    # natlab rekeyed the CHILD_SA (1.5 s) and the IKE SA (3 s); strongSwan took both (RFC 7296 1.3.3, 2.18)
    assert len(re.findall(r"CHILD_SA natlab\{\d+\} established with SPIs", log)) >= 2, _tail(charon.log)
    assert re.search(r"IKE_SA natlab\[\d+\] rekeyed between", log), _tail(charon.log)
    assert {"event": "IkeRekeyed"} in seen
    assert_tshark_opens_ike_auth(tshark_ike(pcaps["srv1-eth0"], keys))


def record_child_outcome(seen: list[dict], log: str, sas: str, folder: Path) -> None:
    """What libipsec did with natlab's ESP tunnel proposal: it accepts it and installs it UDP-encapsulated."""
    child = [e for e in seen if e["event"] in ("ChildEstablished", "ChildFailed")]
    outcome = {"natlab": child, "charon_selected": re.findall(r"selected proposal: (ESP:\S+)", log),
               "charon_installed": re.findall(r"natlab\{\d+\} established with SPIs (\S+ \S+) and TS (.*)", log),
               "list_sas": [line.strip() for line in sas.splitlines() if "INSTALLED" in line]}
    (folder / "child-outcome.json").write_text(json.dumps(outcome, indent=2))
    print("CHILD_SA outcome with strongSwan 5.9.8 libipsec:", json.dumps(outcome))
    assert set(outcome["charon_selected"]) == {"ESP:AES_GCM_16_128/NO_EXT_SEQ"}, outcome  # first and rekeyed
    assert child and child[0]["event"] == "ChildEstablished", outcome
    assert any("TUNNEL-in-UDP" in line for line in outcome["list_sas"]), outcome


def test_strongswan_initiator_establishes_an_ike_sa_with_natlab_direct(make_testbed, tmp_path: Path) -> None:
    """charon on h1 initiates to natlab's responder on srv1; libipsec's faked NAT moves IKE to port 4500."""
    tb = make_testbed(clients=1, servers=1, globals=1)
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    inner_addresses(h1, srv1)
    keys = tmp_path / "natlab-keys"
    with ExitStack() as stack:
        stack.enter_context(PlainForwarding(tb, h1, srv1))
        charon = stack.enter_context(charon_in(h1, tmp_path / "charon", peering(False, "h1")))
        with captures([(srv1, "srv1-eth0")], tmp_path / "pcap") as pcaps:
            proc = natlab_ike(srv1, "respond", keys, "--local", SRV1, "--id", "srv1.natlab", "--remote-id",
                              "h1.natlab", "--local-ts", f"{SRV1_INNER}/32", "--remote-ts", f"{H1_INNER}/32",
                              "--ike-on-4500", "--sas", "1", "--timeout", "20")
            listening(proc)
            initiated = h1.cmd(shlex.join(charon.swanctl("--initiate", "--child", "natlab", "--timeout", "10"))
                               + " 2>&1")
            rekeyed = [h1.cmd(shlex.join(charon.swanctl("--rekey", what, "natlab")) + " 2>&1")
                       for what in ("--child", "--ike")]
            h1.cmd(shlex.join(charon.swanctl("--terminate", "--ike", "natlab", "--timeout", "5")) + " 2>&1")
            seen = events(proc)
    log = charon.log.read_text(errors="replace")
    assert "initiate completed successfully" in initiated, initiated[-2000:]
    assert "authentication of 'srv1.natlab' with pre-shared key successful" in log, _tail(charon.log)
    assert re.search(r"IKE_SA natlab\[\d+\] established between", log), _tail(charon.log)
    assert seen[0]["event"] == "IkeEstablished" and seen[0]["peer"] == "ID_FQDN:h1.natlab", seen
    assert any(e["event"] == "ChildEstablished" and e["mode"] == "tunnel" for e in seen), seen
    assert re.search(r"CHILD_SA natlab\{\d+\} established with SPIs", log), _tail(charon.log)
    assert {"event": "IkeClosed", "reason": "deleted_by_peer"} in seen, seen
    # strongSwan rekeyed the CHILD_SA and the IKE SA; natlab answered both and the new IKE SA took the delete
    assert all("rekey completed successfully" in r for r in rekeyed), rekeyed
    assert {"event": "IkeRekeyed"} in seen and sum(e["event"] == "ChildEstablished" for e in seen) == 2, seen
    assert "proper IKE_SA delete failed" not in log
    assert_tshark_opens_ike_auth(tshark_ike(pcaps["srv1-eth0"], keys))


def lease_cookie(h1) -> dict:
    """FIG. 8 step 801: the global IP and the IKE initiator SPI, leased from the NAT before IKE_SA_INIT."""
    out = h1.cmd(f"natlab lease alloc --protocol isakmp --foreign {SRV1} --lifetime 300 --json")
    answer = json.loads(out[out.index("{"):])
    assert answer["global_ip"] and answer["global_gpn"], out
    return answer


@pytest.mark.parametrize("natd", ["global", "private"])
def test_natlab_initiator_behind_the_extensible_nat_with_a_leased_cookie(make_testbed, tmp_path: Path,
                                                                       natd: str) -> None:
    """The leased SPIi crosses r1 unchanged from UDP port 500; NAT-D over the global address hides the NAT
    from strongSwan, NAT-D over the private address (the control) lets strongSwan see it. With NAT-D global,
    charon then rekeys the IKE SA (RFC 7296 2.18): natlab refuses (its SPIi must be leased, step 801) with
    TEMPORARY_FAILURE and rekeys itself with a second leased SPIi; the CHILD_SA moves to the new IKE SA."""
    tb = make_testbed(clients=1, servers=1, globals=1)
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    keys = tmp_path / "natlab-keys"
    cookie = lease_cookie(h1)
    spi = f"{cookie['global_gpn']:016x}"
    natd_args = ["--natd-address", cookie["global_ip"]] if natd == "global" else []
    spare = f"{lease_cookie(h1)['global_gpn']:016x}" if natd == "global" else None
    rekey_args = ["--next-spi", spare, "--hold", "4"] if spare else ["--hold", "1"]
    with ExitStack() as stack:
        charon = stack.enter_context(charon_in(srv1, tmp_path / "charon", Peering(
            SRV1, "%any", "srv1.natlab", "h1.natlab", PSK, local_ts=(f"{SRV1}/32",), remote_ts=("0.0.0.0/0",))))
        with captures([(srv1, "srv1-eth0"), (h1, "h1-eth0")], tmp_path / "pcap") as pcaps:
            proc = natlab_ike(h1, "initiate", keys, "--local", H1, "--remote", SRV1, "--id", "h1.natlab",
                              "--remote-id", "srv1.natlab", "--spi", spi, "--local-ts", f"{H1}/32",
                              "--remote-ts", f"{SRV1}/32", *rekey_args, *natd_args)
            moved = charon_rekeys_ike(srv1, charon, spare) if spare else ""
            seen = events(proc)
    h1.cmd("natlab lease release --all 2>&1")
    log = charon.log.read_text(errors="replace")
    assert seen[0]["event"] == "IkeEstablished" and seen[0]["spi_i"] == spi, seen
    assert re.search(r"IKE_SA natlab\[\d+\] established between 203\.0\.113\.100\[srv1\.natlab\]\.\.\."
                     + re.escape(cookie["global_ip"]) + r"\[h1\.natlab\]", log), _tail(charon.log)
    wire = tshark_ike(pcaps["srv1-eth0"], keys)
    assert f"Initiator SPI: {spi}" in wire and "Source Port: 500" in wire
    assert f"Src: {cookie['global_ip']}" in wire and f"Src: {H1}" not in wire
    assert_tshark_opens_ike_auth(wire)
    behind = "remote host is behind NAT" in log
    if natd == "global":
        assert not behind and seen[0]["nat_local"] is False, _tail(charon.log)
    else:  # control (b): strongSwan's own NAT detection sees the NAT, as a standard responder should
        assert behind and seen[0]["nat_local"] is True, _tail(charon.log)
    if spare:
        assert_ike_sa_rekeyed_behind_the_nat(log, wire, moved, seen, spare, cookie["global_ip"])


def charon_rekeys_ike(srv1, charon: Charon, spare: str, timeout: float = 5) -> str:
    """``swanctl --rekey --ike`` once the CHILD_SA is up; then --list-sas once the IKE SA of SPIi ``spare``
    (natlab's own rekey) shows."""
    installed_sas(srv1, charon)
    srv1.cmd(shlex.join(charon.swanctl("--rekey", "--ike", "natlab")) + " 2>&1")
    deadline = time.monotonic() + timeout
    while True:
        sas = srv1.cmd(shlex.join(charon.swanctl("--list-sas")) + " 2>/dev/null")
        if f"{spare}_i" in sas or time.monotonic() > deadline:
            return sas
        time.sleep(0.2)


def assert_ike_sa_rekeyed_behind_the_nat(log: str, wire: str, sas: str, seen: list[dict], spare: str,
                                         global_ip: str) -> None:
    """charon saw TEMPORARY_FAILURE, then natlab's rekey from the global IP with the spare leased SPIi,
    which crossed r1 unchanged; the CHILD_SA stands under the new IKE SA, which natlab finally deletes."""
    assert "TEMPORARY_FAILURE" in log, _tail_text(log)
    assert re.search(r"IKE_SA natlab\[\d+\] rekeyed between 203\.0\.113\.100\[srv1\.natlab\]\.\.\."
                     + re.escape(global_ip) + r"\[h1\.natlab\]", log), _tail_text(log)
    assert f"Initiator SPI: {spare}" in wire
    assert "INSTALLED" in ike_sa_section(sas, f"{spare}_i"), sas
    assert {"event": "IkeRekeyed"} in seen and seen[-1] == {"event": "IkeClosed", "reason": "deleted"}, seen
    assert "received DELETE for IKE_SA" in log


def ike_sa_section(sas: str, marker: str) -> str:
    """The lines of ``swanctl --list-sas`` for the IKE SA whose header line holds ``marker`` (its CHILD_SAs are
    the indented lines under it)."""
    lines = sas.splitlines()
    start = next((i for i, line in enumerate(lines) if marker in line), len(lines))
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()), len(lines))
    return "\n".join(lines[start:end])


def _tail_text(text: str, n: int = 3000) -> str:
    return text[-n:]
