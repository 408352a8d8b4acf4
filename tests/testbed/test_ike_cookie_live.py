"""CL-COOKIE live (seed FIG. 8 step 801): three clients behind one global IP, IKE from UDP port 500 each.

Each client leases the global IP and its IKE initiator SPI (the cookie: UDP
500, 64 bits at offset 0) and uses it as SPIi; NAT detection is computed over
the global address. natlab's plain responder on srv1 answers all three at
once. The judge (:func:`cookie_judge`) reads the clients' captures (every IKE
datagram a client receives carries its own SPIi), srv1's capture through
tshark's IKEv2 dissector with the responder's key table (three SPIi, all from
the global IP and port 500, every IKE_AUTH opened), and both sides' events.

Controls, each failing the judge for its predicted reason: (a) no cookie
lease: the NAT has nothing to demultiplex UDP 500 by; (b) NAT-D over the
private address: the responder detects the NAT.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from conformance.evidence import captures
from topo.natlab import server_ip

SRV1 = server_ip(1)
PSK = "natlab-cookie-psk-0123456789"


def run_round(tb, folder: Path, lease: bool, natd_global: bool) -> dict:
    """Three initiators at once against natlab's responder on srv1; what each side saw."""
    clients = [tb.host(f"h{i}") for i in (1, 2, 3)]
    srv1 = tb.host("srv1")
    cookies = {h.name: _lease_cookie(h) if lease else None for h in clients}
    keys = folder / "srv1-keys"
    with ExitStack() as stack:
        pcaps = stack.enter_context(captures([(srv1, "srv1-eth0")] + [(h, f"{h.name}-eth0") for h in clients],
                                             folder / "pcap"))
        responder = srv1.popen([sys.executable, "-m", "client_agent.ike_udp", "respond", "--local", SRV1,
                                "--id", "srv1.natlab", "--psk", PSK, "--keys", str(keys), "--sas", "3",
                                "--timeout", "20", "--remote-ts", "203.0.113.0/24"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        initiators = {h.name: h.popen(_initiate_argv(h, cookies[h.name], natd_global, folder),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for h in clients}
        seen = {name: _events(proc) for name, proc in initiators.items()}
        answered = _events(responder)
    for h in clients:
        if lease:
            h.cmd("natlab lease release --all 2>&1")
    return {"cookies": cookies, "clients": seen, "responder": answered, "pcaps": pcaps, "keys": keys,
            "wire": {name: _ike_on(path, keys) for name, path in pcaps.items()},
            "client_ips": {h.name: h.IP() for h in clients}, "decrypted": _decrypted(pcaps["srv1-eth0"], keys)}


def _lease_cookie(host) -> dict:
    out = host.cmd(f"natlab lease alloc --protocol isakmp --foreign {SRV1} --lifetime 120 --json")
    return json.loads(out[out.index("{"):])


def _initiate_argv(host, cookie: dict | None, natd_global: bool, folder: Path) -> list[str]:
    argv = [sys.executable, "-m", "client_agent.ike_udp", "initiate", "--local", host.IP(), "--remote", SRV1,
            "--id", f"{host.name}.natlab", "--remote-id", "srv1.natlab", "--psk", PSK, "--hold", "2",
            "--timeout", "12", "--keys", str(folder / f"{host.name}-keys"), "--local-ts", f"{host.IP()}/32",
            "--remote-ts", f"{SRV1}/32"]
    if cookie is not None:
        argv += ["--spi", f"{cookie['global_gpn']:016x}"]
        if natd_global:
            argv += ["--natd-address", cookie["global_ip"]]
    return argv


def _events(proc) -> list[dict]:
    out, _ = proc.communicate(timeout=40)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _ike_on(pcap: Path, keys: Path) -> list[dict]:
    """tshark's IKEv2 dissector: one row per IKE datagram (addresses, ports, SPIi, exchange)."""
    fields = ["ip.src", "ip.dst", "udp.srcport", "udp.dstport", "isakmp.ispi", "isakmp.exchangetype"]
    command = ["tshark", "-n", "-r", str(pcap), "-Y", "isakmp", "-T", "fields", "-E", "separator=/t"]
    for name in fields:
        command += ["-e", name]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60,
                         env={"WIRESHARK_CONFIG_DIR": str(keys), "PATH": "/usr/bin:/bin"}).stdout
    return [dict(zip(fields, line.split("\t"), strict=False)) for line in out.splitlines() if line]


def _decrypted(pcap: Path, keys: Path) -> str:
    return subprocess.run(["tshark", "-n", "-r", str(pcap), "-V", "-Y", "isakmp"], capture_output=True, text=True,
                          timeout=60, env={"WIRESHARK_CONFIG_DIR": str(keys), "PATH": "/usr/bin:/bin"}).stdout


def cookie_judge(seen: dict) -> list[str]:
    """CL-COOKIE's checks; the failed ones, each a reason. Empty: the behaviour holds."""
    failed = []
    spis = {}
    for name, events in seen["clients"].items():
        up = [e for e in events if e["event"] == "IkeEstablished"]
        if not up:
            failed.append(f"{name}: no IKE SA ({events[-1:]})")
            continue
        spis[name] = up[0]["spi_i"]
        cookie = seen["cookies"][name]
        if cookie is not None and spis[name] != f"{cookie['global_gpn']:016x}":
            failed.append(f"{name}: SPIi {spis[name]} is not the leased cookie")
        mine = [r for r in seen["wire"][f"{name}-eth0"] if r["ip.dst"] == seen["client_ips"][name]]
        strangers = {r["isakmp.ispi"] for r in mine} - {spis[name]}
        if len(mine) < 2 or strangers:
            failed.append(f"{name}: received {len(mine)} IKE datagrams, SPIi of others {sorted(strangers)}")
    at_srv1 = [r for r in seen["wire"]["srv1-eth0"] if r["ip.dst"] == SRV1]
    if len({r["isakmp.ispi"] for r in at_srv1}) != 3:
        failed.append(f"srv1 saw SPIi {sorted({r['isakmp.ispi'] for r in at_srv1})}, not three")
    ports = {r["udp.srcport"] for r in at_srv1}
    if ports != {"500"}:
        failed.append(f"srv1 saw IKE from source ports {sorted(ports)}, not only 500")
    if any(r["ip.src"].startswith("10.") for r in at_srv1):
        failed.append("private source addresses reached srv1")
    nat_seen = [e for e in seen["responder"] if e["event"] == "IkeEstablished" and e["nat_peer"]]
    if nat_seen:
        failed.append(f"the responder detected a NAT for {len(nat_seen)} IKE SA(s)")
    missing = [h for h in ("h1", "h2", "h3") if f"ID_FQDN: {h}.natlab" not in seen["decrypted"]]
    if missing:
        failed.append(f"tshark could not open IKE_AUTH of {missing} with the responder's keys")
    return failed


@pytest.fixture
def three_clients(make_testbed):
    return make_testbed(clients=3, servers=1, globals=1)


def test_three_clients_share_a_global_ip_with_leased_cookies(three_clients, tmp_path: Path) -> None:
    seen = run_round(three_clients, tmp_path, lease=True, natd_global=True)
    assert cookie_judge(seen) == [], json.dumps({k: seen[k] for k in ("clients", "responder", "wire")})[:4000]


def test_control_without_cookie_leases_fails_for_lack_of_demultiplexing(three_clients, tmp_path: Path) -> None:
    """(a) The NAT holds no ISAKMP entry: UDP 500 gets its own NAPT, or nothing, but no cookie demultiplexing."""
    seen = run_round(three_clients, tmp_path, lease=False, natd_global=False)
    failed = cookie_judge(seen)
    print("control (a) failed checks:", failed)
    assert any("source ports" in f or "no IKE SA" in f or "detected a NAT" in f for f in failed), failed


def test_control_natd_over_the_private_address_lets_the_responder_see_the_nat(three_clients, tmp_path: Path) -> None:
    """(b) Leased cookies, but NAT-D over 10.0.0.x: a standard responder detects the NAT."""
    seen = run_round(three_clients, tmp_path, lease=True, natd_global=False)
    failed = cookie_judge(seen)
    print("control (b) failed checks:", failed)
    assert [f for f in failed if "detected a NAT" in f] and len(failed) == 1, failed
