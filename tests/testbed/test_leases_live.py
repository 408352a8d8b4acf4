"""The lease protocol and client-ALG translation on the live testbed (real OVS, os-ken, kernels)."""

from __future__ import annotations

import json
import sys
import time

from conformance import apps
from conformance.scenarios.leases import ESP_DEF, ask, lease
from netwire.plan import server_ip

SRV1 = server_ip(1)


def test_three_clients_behind_one_global_get_their_own_esp(make_testbed):
    tb = make_testbed(clients=3, servers=1, globals=1)
    clients = [tb.host(f"h{i}") for i in (1, 2, 3)]
    assert ask(clients[0], "DEFINE", **ESP_DEF)["result"] == "SUCCESS"
    spis = {h.name: lease(h, 50)["info"]["global_gpn"] for h in clients}
    assert len(set(spis.values())) == 3
    reflector = tb.host("srv1").popen([sys.executable, "-m", "conformance.probes", "reflect", "--seconds", "8"])
    sinks = {h.name: h.popen([sys.executable, "-m", "conformance.probes", "esp-count", "--seconds", "4"], stdout=-1,
                             text=True)
             for h in clients}
    try:
        time.sleep(0.5)
        apps.probe(clients[1], "raw", SRV1, 50, "--count", 3, "--reply-spi", spis["h2"])
        received = {name: json.loads(p.communicate()[0].splitlines()[-1])["received"] for name, p in sinks.items()}
    finally:
        reflector.terminate()
        reflector.wait()
    assert received == {"h1": 0, "h2": 3, "h3": 0}, received  # only the owner of the SPI gets the answers


def test_a_live_fuzz_of_the_server_leaves_a_sound_table(make_testbed):
    tb = make_testbed(clients=2, servers=1, globals=1)
    h1, h2 = tb.host("h1"), tb.host("h2")
    assert ask(h1, "DEFINE", **ESP_DEF)["result"] == "SUCCESS"
    fuzz = apps.probe(h2, "lease-fuzz", h2.IP(), "--count", 3000)
    assert fuzz["sent"] == 3000
    assert tb.controller.ask("check")["ok"]
    assert lease(h1, 50)["result"] == "SUCCESS"  # good clients still get leases
    counters = tb.table()["counters"]
    assert counters.get("lease_requests", 0) >= 3000 * 0.9  # nearly all reached the server (UDP may drop a few)


def test_natlab_lease_cli_inside_a_host(make_testbed, tmp_path):
    """`natlab lease define|alloc|show|release`, run inside a Mininet host as the README shows."""
    tb = make_testbed(clients=1, servers=1, globals=1)
    h1 = tb.host("h1")
    state = tmp_path / "leases.json"
    natlab = "natlab lease"  # the console script, on the hosts' PATH

    def run(args: str) -> tuple[str, int]:
        out = h1.cmd(f"{natlab} {args} --state {state}; echo EXIT=$?")
        return out, int(out.rsplit("EXIT=", 1)[1].split()[0])

    out, code = run("define esp")
    assert code == 0, out
    out, code = run(f"alloc --protocol esp --foreign {SRV1} --lifetime 600")
    assert code == 0 and "203.0.113.1" in out, out
    entries = [e for e in tb.table()["entries"] if e["kind"] == "CLIENT-ALG"]
    assert len(entries) == 1 and entries[0]["private_ip"] == "10.0.0.1"
    out, code = run("show")
    assert code == 0 and hex(entries[0]["global_gpn"]) in out and "CLIENT-ALG" in out, out
    out, code = run("release --all")
    assert code == 0, out
    assert not [e for e in tb.table()["entries"] if e["kind"] == "CLIENT-ALG"]
    out, code = run("alloc --protocol esp --foreign not-an-ip")
    assert code == 2 and "--foreign" in out and "not-an-ip" in out, out
