"""The natlab testbed (FIG. 1 of the seed), as a Mininet topology.

    h1..hN 10.0.0.i -- s1 -- [1 inside] r1 [2 outside] -- s2 -- srv1..srvM 203.0.113.100+j
                                                            `-- sgw1 203.0.113.200 -- ih1 172.16.0.10

r1 is the only OpenFlow switch (driven by the NAT app); s1 and s2 are
standalone L2 bridges. Every bridge uses OVS's userspace datapath (no OVS
kernel module on these machines).

This file imports only Mininet and the standard library, so Debian's ``mn``
can load it as it is:

    sudo mn --custom topo/natlab.py --topo natlab,clients=3 \\
        --switch ovs,datapath=user --controller remote
"""

from mininet.link import TCLink
from mininet.node import Host, OVSBridge
from mininet.topo import Topo

INSIDE_NET = "10.0.0.0/24"
GATEWAY_IP = "10.0.0.254"
OUTSIDE_NET = "203.0.113.0/24"
FIRST_GLOBAL = 1  # 203.0.113.1 .. 203.0.113.k: the NAT's global pool
FIRST_SERVER = 100  # 203.0.113.100 ..
SGW_OUTSIDE_IP = "203.0.113.200"
SGW_INSIDE_IP = "172.16.0.1"
INTRANET_HOST_IP = "172.16.0.10"
R1_INSIDE_PORT = 1
R1_OUTSIDE_PORT = 2
R1_DPID = "00000000004e4154"  # "NAT"

LIMITS = {"clients": (1, 99), "servers": (1, 99), "globals": (1, 99)}


class NatlabHost(Host):
    """A host whose interfaces feed a userspace OVS bridge.

    Transmit checksum offload must be off, or TCP leaves with unfinished
    checksums (ENVIRONMENT.md: iperf3 moved 0 bytes with it on). IPv6 is off to
    keep captures to what the tests send.
    """

    def config(self, **params):
        result = super().config(**params)
        for intf in self.intfList():
            if intf.name != "lo":
                self.cmd("ethtool -K", intf.name, "tx off >/dev/null 2>&1")
        self.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
        return result


class GatewayHost(NatlabHost):
    """sgw1: the tunnel-mode gateway in front of the intranet; it routes."""

    def config(self, **params):
        result = super().config(**params)
        self.cmd("sysctl -qw net.ipv4.ip_forward=1")
        return result


def server_ip(j: int) -> str:
    return f"203.0.113.{FIRST_SERVER + j - 1}"


def client_ip(i: int) -> str:
    return f"10.0.0.{i}"


def global_ips(k: int) -> list:
    return [f"203.0.113.{FIRST_GLOBAL + n}" for n in range(k)]


class NatlabTopo(Topo):
    """Parameters: clients, servers, globals (pool size), bw (access link Mbit/s, optional)."""

    def build(self, clients=3, servers=2, globals=2, bw=None):
        for name, value in (("clients", clients), ("servers", servers), ("globals", globals)):
            low, high = LIMITS[name]
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"natlab topology: {name}={value!r} is not a whole number in {low}..{high}")
        if bw is not None and not (isinstance(bw, (int, float)) and bw > 0):
            raise ValueError(f"natlab topology: bw={bw!r} is not a positive rate in Mbit/s")
        s1 = self.addSwitch("s1", cls=OVSBridge, datapath="user", dpid="0000000000000011")
        s2 = self.addSwitch("s2", cls=OVSBridge, datapath="user", dpid="0000000000000012")
        r1 = self.addSwitch("r1", datapath="user", protocols="OpenFlow13", dpid=R1_DPID)
        for i in range(1, clients + 1):
            h = self.addHost(f"h{i}", cls=NatlabHost, ip=f"{client_ip(i)}/24", defaultRoute=f"via {GATEWAY_IP}")
            self.addLink(h, s1)
        self.addLink(s1, r1, port2=R1_INSIDE_PORT)
        access = {"cls": TCLink, "bw": bw} if bw else {}
        self.addLink(r1, s2, port1=R1_OUTSIDE_PORT, **access)
        for j in range(1, servers + 1):
            self.addLink(self.addHost(f"srv{j}", cls=NatlabHost, ip=f"{server_ip(j)}/24"), s2)
        sgw = self.addHost("sgw1", cls=GatewayHost, ip=f"{SGW_OUTSIDE_IP}/24")
        self.addLink(sgw, s2)
        ih1 = self.addHost("ih1", cls=NatlabHost, ip=f"{INTRANET_HOST_IP}/24", defaultRoute=f"via {SGW_INSIDE_IP}")
        self.addLink(sgw, ih1, params1={"ip": f"{SGW_INSIDE_IP}/24"})


topos = {"natlab": NatlabTopo}
