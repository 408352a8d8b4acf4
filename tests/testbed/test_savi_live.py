"""Source-address validation at s1 (RFC 7039) on the live testbed: real OVS, os-ken, Mininet hosts.

Issue 9, live test (c): a forger on s1 with the victim's IP and MAC cannot
renew, release, read or hijack anything, and the victim's traffic is unaffected.
"""

from __future__ import annotations

import subprocess
import sys
import time

from conformance.scenarios.leases import ESP_DEF, ask, lease
from netwire.plan import GATEWAY_IP, R1_INSIDE_MAC, server_ip

SRV1 = server_ip(1)
PORT_GONE_WAIT_S = 10.0  # OVS polls a port's carrier; the PortStatus follows within a second or two


def savi(tb) -> dict:
    return tb.table()["savi"]


def poison_arp(forger, claimed_ip: str) -> None:
    """The forger, with its own MAC, tells the link that ``claimed_ip`` is at it (scapy, three times)."""
    mac, intf = forger.MAC(), forger.defaultIntf().name
    script = (f"from scapy.all import ARP, Ether, sendp; sendp(Ether(src='{mac}', dst='ff:ff:ff:ff:ff:ff') / "
              f"ARP(op=2, hwsrc='{mac}', psrc='{claimed_ip}', hwdst='ff:ff:ff:ff:ff:ff', pdst='{GATEWAY_IP}'), "
              f"iface='{intf}', count=3, verbose=False)")
    out = forger.cmd(f"{sys.executable} -c \"{script}\"; echo rc=$?")
    assert out.strip().endswith("rc=0"), out


def become(forger, ip: str, mac: str) -> None:
    """The forger's interface takes the victim's MAC and IP; the gateway's MAC is set by hand,
    since its ARP (from the victim's IP on the wrong port) never gets an answer."""
    intf = forger.defaultIntf().name
    for command in (f"ip link set {intf} address {mac}", f"ip addr flush dev {intf}",
                    f"ip addr add {ip}/24 dev {intf}", f"ip route replace default via {GATEWAY_IP}",
                    f"ip neigh replace {GATEWAY_IP} lladdr {R1_INSIDE_MAC} dev {intf}"):
        out = forger.cmd(f"{command}; echo rc=$?")
        assert out.strip().endswith("rc=0"), (command, out)


def s1_port_of(mac: str) -> int | None:
    """The port where s1's own L2 learning (NORMAL) saw ``mac`` (ovs-appctl fdb/show)."""
    out = subprocess.run(["ovs-appctl", "fdb/show", "s1"], capture_output=True, text=True).stdout
    ports = [int(f[0]) for f in (line.split() for line in out.splitlines()[1:]) if len(f) >= 3 and f[2] == mac]
    return ports[0] if ports else None


def victim_lease(h1) -> tuple:
    """h1 defines ESP and leases an SPI for 300 s: the nonce and the lease's fields a forger would replay."""
    assert ask(h1, "DEFINE", **ESP_DEF)["result"] == "SUCCESS"
    granted = lease(h1, 50, lifetime=300)
    assert granted["result"] == "SUCCESS", granted
    return granted["nonce"], {k: v for k, v in granted["info"].items() if k != "nonce"}


def test_a_forger_with_the_victims_ip_and_mac_cannot_renew_release_read_or_hijack(make_testbed):
    tb = make_testbed(clients=3, servers=1, globals=1)
    h1, h3 = tb.host("h1"), tb.host("h3")
    victim_ip, victim_mac = h1.IP(), h1.MAC()
    nonce, fields = victim_lease(h1)
    (entry,) = [e for e in tb.table()["entries"] if e["kind"] == "CLIENT-ALG"]
    requests = tb.table()["counters"].get("lease_requests", 0)
    ping = h1.popen(["ping", "-n", "-i", "0.2", "-c", "60", SRV1], stdout=subprocess.PIPE, text=True)
    time.sleep(1)  # the victim's traffic is flowing when the forger starts

    poison_arp(h3, victim_ip)
    become(h3, victim_ip, victim_mac)
    forged = {
        "renew": ask(h3, "LEASE", client_ip=victim_ip, nonce=nonce, lifetime=3600, **fields),
        "release": ask(h3, "LEASE", client_ip=victim_ip, nonce=nonce, lifetime=0, **fields),
        "read": ask(h3, "READ", client_ip=victim_ip, nonce=nonce),
        "hijack": lease(h3, 50, client_ip=victim_ip, global_gpn=fields["global_gpn"]),
    }
    h3.cmd(f"ping -n -c 3 -i 0.2 -W 1 {SRV1}")  # and plain traffic as the victim
    pinged = ping.communicate(timeout=60)[0]

    assert forged == {k: {"answered": False} for k in forged}, forged
    table = tb.table()
    (after,) = [e for e in table["entries"] if e["kind"] == "CLIENT-ALG"]
    assert after["id"] == entry["id"] and after["expires_in"] <= 300, after  # neither renewed nor released
    assert table["counters"].get("lease_requests", 0) == requests  # no forged request reached the server
    assert table["neighbours"][victim_ip] == victim_mac
    drops = table["savi"]["counters"]
    assert drops.get("drop:ip-bound-on-other-port", 0) >= 2, drops  # the ARP poison, and the forged frames
    assert {"port": 1, "mac": victim_mac, "ip": victim_ip} in table["savi"]["bindings"]
    assert s1_port_of(victim_mac) == 1  # s1 never learned the victim's MAC on the forger's port
    assert " 0% packet loss" in pinged, pinged
    assert ask(h1, "READ", nonce=nonce)["result"] == "SUCCESS"  # the owner still reads its lease


def test_a_binding_ends_when_its_host_leaves_the_port(make_testbed):
    tb = make_testbed(clients=2, servers=1, globals=1)
    h2 = tb.host("h2")
    assert "1 received" in h2.cmd(f"ping -n -c 1 -W 2 {SRV1}")
    assert {"port": 2, "mac": h2.MAC(), "ip": h2.IP()} in savi(tb)["bindings"]
    h2.cmd(f"ip link set {h2.defaultIntf().name} down")
    deadline = time.monotonic() + PORT_GONE_WAIT_S
    while any(b["ip"] == h2.IP() for b in savi(tb)["bindings"]):
        assert time.monotonic() < deadline, f"binding of {h2.IP()} still there: {savi(tb)}"
        time.sleep(0.2)
    assert savi(tb)["counters"]["bindings_port_gone"] == 1


def test_after_a_controller_restart_a_forger_still_cannot_claim_a_bound_address(make_testbed):
    """The bindings survive a SIGKILL of the controller (saved, and reconciled with s1's flows), so no
    forger gets a first-come window while the controller comes back."""
    tb = make_testbed(clients=3, servers=1, globals=1)
    h1, h3 = tb.host("h1"), tb.host("h3")
    victim_ip, victim_mac = h1.IP(), h1.MAC()
    nonce, fields = victim_lease(h1)
    tb.controller.restart(kill=True)

    poison_arp(h3, victim_ip)
    become(h3, victim_ip, victim_mac)
    forged = {"renew": ask(h3, "LEASE", client_ip=victim_ip, nonce=nonce, lifetime=3600, **fields),
              "release": ask(h3, "LEASE", client_ip=victim_ip, nonce=nonce, lifetime=0, **fields)}
    assert forged == {k: {"answered": False} for k in forged}, forged
    table = tb.table()
    assert {"port": 1, "mac": victim_mac, "ip": victim_ip} in table["savi"]["bindings"]
    assert table["savi"]["counters"].get("drop:ip-bound-on-other-port", 0) >= 2, table["savi"]
    assert s1_port_of(victim_mac) == 1
    assert ask(h1, "READ", nonce=nonce)["result"] == "SUCCESS"  # the owner, pinned to port 1, still reads it
