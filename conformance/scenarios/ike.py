"""CL-COOKIE (seed FIG. 8 step 801): clients behind one global IP run IKE from UDP port 500 with leased SPIi.

Three clients each lease the global IP and their IKE initiator SPI (the
cookie: UDP 500, 64 bits at offset 0, ``netwire.pcp.ISAKMP_DEFINITION``),
use it as SPIi and compute NAT detection over the global address; natlab's
plain IKEv2 responder on srv1 answers all three at once. The judge reads the
clients' captures (every IKE datagram a client receives carries its own
SPIi), srv1's capture through tshark's IKEv2 dissector with the responder's
``ikev2_decryption_table`` (three SPIi, all from the global IP and port 500,
every IKE_AUTH opened) and both sides' events (the responder saw no NAT).

The controls (tests/testbed/test_ike_cookie_live.py) run the same round
(a) without cookie leases and (b) with NAT-D over the private address; each
fails :func:`cookie_judge` for its own reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from conformance.context import Context
from conformance.evidence import captures
from conformance.results import ScenarioResult
from conformance.scenario import scenario
from topo.natlab import server_ip

SRV1 = server_ip(1)
PSK = "natlab-cookie-psk-0123456789"
TSHARK_ENV = {"PATH": "/usr/bin:/bin"}


def run_round(tb, folder: Path, lease: bool, natd_global: bool) -> dict:
    """Three initiators at once against natlab's responder on srv1; what each side saw."""
    clients = [tb.host(f"h{i}") for i in (1, 2, 3)]
    srv1 = tb.host("srv1")
    shared = tb.table()["globals"][0]  # all three behind one global IP: replies need the cookie to be told apart
    state = {h.name: folder / f"{h.name}-leases.json" for h in clients}  # this round's own lease state files
    cookies = {h.name: _lease_cookie(h, shared, state[h.name]) if lease else None for h in clients}
    keys = folder / "srv1-keys"
    with ExitStack() as stack:
        pcaps = stack.enter_context(captures([(srv1, "srv1-eth0")] + [(h, f"{h.name}-eth0") for h in clients],
                                             folder / "pcap"))
        responder = srv1.popen([sys.executable, "-m", "client_agent.ike_udp", "respond", "--local", SRV1,
                                "--id", "srv1.natlab", "--psk", PSK, "--keys", str(keys), "--sas", "3",
                                "--timeout", "20", "--remote-ts", "203.0.113.0/24"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _listening(responder)
        initiators = {h.name: h.popen(_initiate_argv(h, cookies[h.name], natd_global, folder),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for h in clients}
        seen = {name: _events(proc) for name, proc in initiators.items()}
        answered = _events(responder)
    released = {h.name: h.cmd(f"natlab lease release --all --state {state[h.name]} 2>&1") for h in clients if lease}
    return {"cookies": cookies, "clients": seen, "responder": answered, "pcaps": pcaps, "keys": keys,
            "released": released,
            "wire": {name: _ike_on(path, keys) for name, path in pcaps.items()},
            "client_ips": {h.name: h.IP() for h in clients}, "decrypted": _decrypted(pcaps["srv1-eth0"], keys)}


def _lease_cookie(host, global_ip: str, state: Path) -> dict:
    """The cookie lease (FIG. 8 step 801), kept in ``state``: the host's default state file outlives testbeds
    and scenarios, and a stale epoch or stale leases in it must not decide what this round releases."""
    out = host.cmd(f"natlab lease alloc --protocol isakmp --foreign {SRV1} --global-ip {global_ip} --lifetime 120 "
                   f"--json --state {state}")
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
    parsed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [e for e in parsed if e["event"] != "Listening"]


def _listening(proc) -> None:
    """Until natlab's IKE shell says its sockets are bound (its first line)."""
    line = proc.stdout.readline()
    if not line.startswith('{"event": "Listening"'):
        raise RuntimeError(f"the IKE responder did not start: {line}{proc.stdout.read()[-500:]}")


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
    failed: list[str] = []
    for name, events in seen["clients"].items():
        failed += _client_checks(seen, name, events)
    globals_ = {c["global_ip"] for c in seen["cookies"].values() if c is not None}
    if len(globals_) > 1:
        failed.append(f"the cookies were leased on several global IPs {sorted(globals_)}, not one")
    kept = {name: out.strip()[-200:] for name, out in seen.get("released", {}).items() if "released" not in out}
    if kept:
        failed.append(f"cookie leases not released (a later scenario's IKE from port 500 would meet them): {kept}")
    return failed + _responder_checks(seen)


def _client_checks(seen: dict, name: str, events: list[dict]) -> list[str]:
    """One client: its IKE SA is up, with the leased cookie as SPIi, and it received only its own IKE."""
    up = [e for e in events if e["event"] == "IkeEstablished"]
    if not up:
        return [f"{name}: no IKE SA ({events[-1:]})"]
    failed = []
    spi = up[0]["spi_i"]
    cookie = seen["cookies"][name]
    if cookie is not None and spi != f"{cookie['global_gpn']:016x}":
        failed.append(f"{name}: SPIi {spi} is not the leased cookie")
    mine = [r for r in seen["wire"][f"{name}-eth0"] if r["ip.dst"] == seen["client_ips"][name]]
    strangers = {r["isakmp.ispi"] for r in mine} - {spi}
    if len(mine) < 2 or strangers:
        failed.append(f"{name}: received {len(mine)} IKE datagrams, SPIi of others {sorted(strangers)}")
    return failed


def _responder_checks(seen: dict) -> list[str]:
    """srv1: three SPIi, all from port 500 and global addresses, no NAT detected, tshark opens every IKE_AUTH."""
    failed = []
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


@scenario(covers=("CL-COOKIE",), order=95)
def cl_cookie(ctx: Context) -> list[ScenarioResult]:
    """CL-COOKIE on the live testbed: three clients, one global IP, IKE from port 500 with leased cookies."""
    with ctx.recorded("cl-cookie") as rec:
        seen = run_round(ctx.testbed, rec.folder, lease=True, natd_global=True)
    failed = cookie_judge(seen)
    spis = {name: seen["cookies"][name]["global_gpn"] for name in seen["cookies"]}
    return [rec.result(
        "CL-COOKIE", "three-clients-port-500", [(not failed, "; ".join(failed))],
        positive=f"three clients leased SPIi {{name: hex}} = { {k: f'{v:016x}' for k, v in spis.items()} } on one "
                 "global IP; each received only IKE with its own SPIi; srv1 saw all three from port 500 and tshark "
                 "opened every IKE_AUTH with the responder's keys",
        negative="no client received another's IKE; the responder detected no NAT (NAT-D over the global address)",
        extra_evidence=list(seen["pcaps"].values()))]
