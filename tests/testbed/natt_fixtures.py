"""Set-up shared by the live NAT-T tests: natlab agents keyed by IKE in tunnel or transport mode, several
clients behind one NAT at once, and tshark's per-packet view of UDP-encapsulated ESP, decrypted.

The clients initiate (h1..hN, no ``[nat]`` table: they lease nothing, so the NAT treats their IKE and
UDP/4500 as ordinary NAPT flows); srv1's one agent answers them all. In transport mode srv1 routes the
NAT's global address into its TUN: behind a NAT its peers are that address (RFC 7296 section 2.23.1).
"""

from __future__ import annotations

import subprocess
from contextlib import ExitStack
from pathlib import Path

from client_agent.agent_cli import AgentProcess
from client_agent.ipsec.udpencap import NATT_PORT
from conformance.evidence import TSHARK_PER_PACKET, tshark_payloads_as_data
from conformance.natt_peers import agent_config
from netwire.plan import server_ip
from tests.testbed.ike_fixtures import wait_for_child

SRV1 = server_ip(1)
KEEPALIVE_SECONDS = 2
# tshark's view of one UDP-encapsulated ESP packet; the first occurrence of each field (the outer header,
# then what the decrypted ESP carries)
ROW_FIELDS = ("ip.src", "ip.dst", "udp.srcport", "udp.dstport", "esp.spi", "esp.icv_good", "tcp.srcport",
              "tcp.dstport", "tcp.checksum.status", "tcp.flags.reset")


def client_config(i: int, mode: str) -> str:
    return agent_config(f"h{i}", keepalive=KEEPALIVE_SECONDS, mode=mode)


def server_config(mode: str) -> str:
    """srv1 answers any client of the inside network; in transport mode its peers are the NAT's address."""
    return agent_config("srv1", keepalive=KEEPALIVE_SECONDS, mode=mode, clients=3)


def start_agent(stack: ExitStack, host, text: str, folder: Path) -> AgentProcess:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "agent.toml").write_text(text)
    return stack.enter_context(AgentProcess(host, folder / "agent.toml", folder))


def start_clients(stack: ExitStack, hosts: list, mode: str, folder: Path) -> list[AgentProcess]:
    """Each of ``hosts`` (h1, h2, ...) initiates to srv1's responder in ``mode``; returns once all CHILD_SAs are up."""
    agents = [start_agent(stack, h, client_config(int(h.name[1:]), mode), folder / f"agent-{h.name}") for h in hosts]
    for agent in agents:
        wait_for_child(agent)
    return agents


def children(agent: AgentProcess) -> int:
    return (agent.status().get("ike") or {}).get("children", 0)


def curls_at_once(hosts: list, url: str, first_port: int) -> dict[str, str]:
    """Unmodified curl in every host at the same time, host i from local TCP port ``first_port + i``
    (so that a capture tells whose connection a packet belongs to); what each printed."""
    procs = {h.name: h.popen(["curl", "-s", "--max-time", "8", "--local-port", str(first_port + int(h.name[1:])), url],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for h in hosts}
    return {name: proc.communicate(timeout=15)[0].decode(errors="replace") for name, proc in procs.items()}


def natt_rows(pcap: Path, keyfile_dir: Path) -> list[dict[str, str]]:
    """tshark's UDP-encapsulated ESP frames of ``pcap``, decrypted with the ``esp_sa`` in ``keyfile_dir``.

    Per packet, payloads as data: with TCP reassembly on, a retransmitted segment raised "New fragment
    overlaps old data" inside the decrypted payload, and the ESP dissector never added that frame's ICV field."""
    command = ["tshark", "-n", "-r", str(pcap), "-Y", f"udp.port == {NATT_PORT} && esp",
               "-o", "esp.enable_encryption_decode:TRUE", "-o", "esp.enable_authentication_check:TRUE",
               "-o", "tcp.check_checksum:TRUE", *TSHARK_PER_PACKET, *tshark_payloads_as_data(),
               "-T", "fields", "-E", "separator=/t", "-E", "occurrence=f"]
    for name in ROW_FIELDS:
        command += ["-e", name]
    env = {"WIRESHARK_CONFIG_DIR": str(keyfile_dir), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    return [dict(zip(ROW_FIELDS, line.split("\t"), strict=True)) for line in out.splitlines()]


def spi_owners(agents: list[AgentProcess]) -> dict[int, str]:
    """SPI -> the client (agent name) whose SA it is, from each client's own key file (both directions)."""
    owners = {}
    for agent in agents:
        for line in agent.keyfile.read_text().splitlines():
            spi = int(line.split(",")[3].strip('"'), 16)
            owners[spi] = agent.run_dir.name.removeprefix("agent-")
    return owners
