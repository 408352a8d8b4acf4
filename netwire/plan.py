"""The testbed's addressing plan: every address, prefix, pool, MAC, datapath id and well-known port
that the topology, the NAT, the agents, the lease clients, the probes and the scenarios agree on.

One source per fact: ``topo.natlab`` builds the network from it, ``nat_app.config.NatConfig`` takes its
defaults from it, the agents' example configs are checked against it (``tests/unit/test_plan.py``), and
every test or scenario that needs an address asks it. Pure: it imports nothing above ``netwire``.

    h1..hN  INSIDE_NET (client_ip(i))  -- s1 -- r1 (GATEWAY_IP) -- s2 -- srv1..srvM (server_ip(j))
                                              global pool global_ips(k)      sgw1 -- INTRANET_NET (ih1)
"""

from __future__ import annotations

import ipaddress

from netwire.pcp import CLIENT_PORT, SERVER_PORT

INSIDE_NET = "10.0.0.0/24"  # the private side (seed FIG. 1: the clients' network)
GATEWAY_IP = "10.0.0.254"  # r1's inside address: the clients' default route and the lease server
OUTSIDE_NET = "203.0.113.0/24"  # the global side (RFC 5737 TEST-NET-3)
FIRST_GLOBAL = 1  # OUTSIDE_NET .1 .. .k: the NAT's global pool
FIRST_SERVER = 100  # OUTSIDE_NET .100 ..: the servers srv1..srvM
SGW_OUTSIDE_IP = "203.0.113.200"  # sgw1, the security gateway of tunnel mode
SGW_INSIDE_IP = "172.16.0.1"
INTRANET_NET = "172.16.0.0/24"  # behind sgw1 (tunnel mode's protected network)
INTRANET_HOST_IP = "172.16.0.10"  # ih1
OFF_PLAN_IP = "198.51.100.1"  # RFC 5737 TEST-NET-2: in no network of the plan (not a global of the NAT)

R1_INSIDE_PORT = 1  # r1's OpenFlow ports
R1_OUTSIDE_PORT = 2
R1_INSIDE_MAC = "02:4e:41:54:00:01"  # the classic r1 answers ARP with the same, so frames built by hand fit
R1_OUTSIDE_MAC = "02:4e:41:54:00:02"
R1_DPID = 0x4E4154  # "NAT"
S1_DPID = 0x11  # the access switch the app drives for SAVI (RFC 7039)
S1_UPLINK_PORT = 100  # s1's port toward r1; clients take 1..99
S2_DPID = 0x12  # the outside L2 bridge
MAX_HOSTS = 99  # clients, servers and globals: 1..99 each (s1's ports below its uplink)

LEASE_SERVER = (GATEWAY_IP, SERVER_PORT)  # PCP requests go to the gateway (RFC 6887 7, 19.1)
ANNOUNCE_PORT = CLIENT_PORT  # unsolicited ANNOUNCEs reach the clients here (RFC 6887 14.1.3)


def _host(net: str, index: int) -> str:
    return str(ipaddress.ip_network(net)[index])


def client_ip(i: int) -> str:
    """h``i``'s private address (1-based)."""
    return _host(INSIDE_NET, i)


def server_ip(j: int) -> str:
    """srv``j``'s global address (1-based)."""
    return _host(OUTSIDE_NET, FIRST_SERVER + j - 1)


def global_ips(k: int) -> list[str]:
    """The NAT's pool of ``k`` global addresses."""
    return [_host(OUTSIDE_NET, FIRST_GLOBAL + n) for n in range(k)]


def dpid_text(dpid: int) -> str:
    """A datapath id as Mininet and OVS spell it: 16 hex digits."""
    return f"{dpid:016x}"
