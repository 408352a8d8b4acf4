"""NAT-T (RFC 3948, RFC 7296 section 2.23) live: helpers for the tests of this file.

The three checks that used to live here (natlab <-> natlab NAT-T through the NAPT with curl, tshark
and keepalives; natlab -> strongSwan's charon with curl; the no-NAT control keeping raw ESP) are the
report's "baseline" group now: conformance/scenarios/baseline.py, run by ``natlab demo``, which
tests/testbed/test_launchers.py runs in CI. They are not run twice.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from client_agent.ipsec.udpencap import NATT_PORT
from netwire.plan import global_ips
from topo.natlab import client_ip, server_ip

H1, SRV1, GLOBAL = client_ip(1), server_ip(1), global_ips(1)[0]
KEEPALIVE_SECONDS = 2
PSK = "natlab NAT-T example pre-shared key"


def config(name: str, routes: str, address: str, ike: str) -> str:
    return (f'[agent]\nname = "{name}"\nroutes = ["{routes}"]\naddress = "{address}"\n\n[ike]\n{ike}'
            f'psk = "{PSK}"\nproposals = ["aes128-sha256-modp2048"]\nesp = ["aes128gcm16"]\nmode = "tunnel"\n'
            f"keepalive = {KEEPALIVE_SECONDS}\n")


def write_configs(tmp_path: Path) -> tuple[Path, Path]:
    h1 = config("h1", f"{SRV1}/32", H1, f'role = "initiator"\npeer = "{SRV1}"\nlocal_id = "h1.natlab"\n'
                f'remote_id = "srv1.natlab"\nlocal_ts = ["{H1}/32"]\nremote_ts = ["{SRV1}/32"]\n')
    srv1 = config("srv1", f"{H1}/32", SRV1, f'role = "responder"\nlocal_id = "srv1.natlab"\nremote_id = "h1.natlab"\n'
                  f'local_ts = ["{SRV1}/32"]\nremote_ts = ["{H1}/32"]\n')
    (tmp_path / "h1.toml").write_text(h1)
    (tmp_path / "srv1.toml").write_text(srv1)
    return tmp_path / "h1.toml", tmp_path / "srv1.toml"


def udp_rows(pcap: Path) -> list[list[str]]:
    """tshark's UDP/4500 frames: source, destination, ports, UDP length, ESP SPI, payload, its keepalive verdict."""
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-Y", f"udp.port == {NATT_PORT}", "-T", "fields", "-E", "separator=/t",
                          "-e", "ip.src", "-e", "ip.dst", "-e", "udp.srcport", "-e", "udp.dstport",
                          "-e", "udp.length", "-e", "esp.spi", "-e", "udp.payload",
                          "-e", "udpencap.nat_keepalive"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]
