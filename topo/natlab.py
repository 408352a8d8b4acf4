"""The natlab testbed (FIG. 1 of the seed), as a Mininet topology.

    h1..hN client_ip(i) -- s1 -- [1 inside] r1 [2 outside] -- s2 -- srv1..srvM server_ip(j)
                                                                `-- sgw1 SGW_OUTSIDE_IP -- ih1 INTRANET_HOST_IP

Every address, MAC, port and datapath id comes from the addressing plan, :mod:`netwire.plan`.

r1 (the NAT) and s1 (the access switch) are OpenFlow switches driven by the
NAT app; s2 is a standalone L2 bridge. s1 is where each client has a port of
its own, so it is where the app validates source addresses (SAVI, RFC 7039:
nat_app/savi.py); its fail mode is secure, so without the app it forwards
nothing it was not told to. Every bridge uses OVS's userspace datapath (no OVS
kernel module on these machines).

With ``nat=classic`` r1 is instead a traditional NAT (RFC 3022): a Linux
router in its own namespace doing conntrack masquerade with nftables, and no
controller. Everything else is the same, so the same agents and traffic run on
it: it is the control for what must fail without the extensible NAT. There is
no controller then, so s1 is a standalone bridge too.

This file imports only Mininet, the standard library and ``netwire.plan``, so
the ``mn`` of natlab's venv (PyPI's Mininet, beside an installed natlab) can
load it as it is:

    sudo .venv/bin/mn --custom topo/natlab.py --topo natlab,clients=3 \\
        --switch ovs,datapath=user --controller remote
    sudo .venv/bin/mn --custom topo/natlab.py --topo natlab,nat=classic \\
        --switch ovs,datapath=user --controller none
"""

import shutil

from mininet.link import TCLink
from mininet.node import Host, OVSBridge
from mininet.topo import Topo

from netwire.plan import (  # noqa: F401  (re-exported: the testbed's addresses, as callers knew them)
    FIRST_GLOBAL,
    FIRST_SERVER,
    GATEWAY_IP,
    INSIDE_NET,
    INTRANET_HOST_IP,
    MAX_HOSTS,
    OUTSIDE_NET,
    R1_DPID,
    R1_INSIDE_MAC,
    R1_INSIDE_PORT,
    R1_OUTSIDE_MAC,
    R1_OUTSIDE_PORT,
    S1_DPID,
    S1_UPLINK_PORT,
    S2_DPID,
    SGW_INSIDE_IP,
    SGW_OUTSIDE_IP,
    client_ip,
    dpid_text,
    global_ips,
    server_ip,
)

NAT_KINDS = ("extensible", "classic")
NFT_TABLE = "natlab"

LIMITS = {"clients": (1, MAX_HOSTS), "servers": (1, MAX_HOSTS), "globals": (1, MAX_HOSTS)}


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


class ClassicNatRouter(NatlabHost):
    """r1 as a traditional NAPT router (RFC 3022 section 2.2): kernel forwarding
    and conntrack masquerade to the outside interface's primary address.

    Linux rewrites ports (or the ICMP identifier) only for protocols whose
    ports conntrack knows (TCP, UDP, SCTP, DCCP, ICMP echo); any other protocol,
    ESP and AH included, is tracked by its address pair alone and masqueraded
    by address only. Parameters: ``outside`` (interface name) and ``pool``
    (the global addresses: the link sets the first, the primary one that
    masquerade uses; the rest become secondary addresses). The rules die with
    the namespace, so teardown is Mininet's.
    """

    def config(self, outside: str = "", pool: tuple = (), **params):
        result = super().config(**params)
        if not outside:
            raise ValueError(f"classic NAT {self.name}: outside={outside!r} names no interface")
        for ip in pool[1:]:
            self._run(f"ip addr add {ip}/24 dev {outside}")
        self._run("sysctl -qw net.ipv4.ip_forward=1")
        self._masquerade(outside)
        return result

    def _masquerade(self, outside: str) -> None:
        """One nat table, one postrouting chain, one rule: what a home router does; and, as a home router has
        it, conntrack's FTP helper on TCP port 21 (no longer attached by default: it must be assigned)."""
        nft = shutil.which("nft") or "/usr/sbin/nft"
        self._run(f"{nft} add table ip {NFT_TABLE}")
        self._run(f"{nft} 'add chain ip {NFT_TABLE} postrouting {{ type nat hook postrouting priority srcnat; }}'")
        self._run(f"{nft} add rule ip {NFT_TABLE} postrouting oifname {outside} masquerade")
        self._run(f"{nft} 'add ct helper ip {NFT_TABLE} ftp-std {{ type \"ftp\" protocol tcp; }}'")
        self._run(f"{nft} 'add chain ip {NFT_TABLE} helpers {{ type filter hook prerouting priority filter; }}'")
        self._run(f"{nft} add rule ip {NFT_TABLE} helpers tcp dport 21 ct helper set '\"ftp-std\"'")

    def _run(self, command: str) -> str:
        """Run ``command`` in the namespace; raise with its output if it fails."""
        out = self.cmd(f"{command} 2>&1; echo rc=$?")
        body, _, rc = out.rstrip().rpartition("rc=")
        if rc.strip() != "0":
            hint = " (apt-get install nftables)" if "nft" in command and "not found" in body else ""
            raise RuntimeError(f"classic NAT {self.name}: `{command}` failed with {rc.strip()}: {body.strip()}{hint}")
        return body


class NatlabTopo(Topo):
    """Parameters: clients, servers, globals (pool size), bw (access link Mbit/s, optional),
    nat (``extensible``: r1 is the OpenFlow switch; ``classic``: r1 is a Linux masquerading router)."""

    def build(self, clients=3, servers=2, globals=2, bw=None, nat="extensible"):
        for name, value in (("clients", clients), ("servers", servers), ("globals", globals)):
            low, high = LIMITS[name]
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"natlab topology: {name}={value!r} is not a whole number in {low}..{high}")
        if bw is not None and not (isinstance(bw, (int, float)) and bw > 0):
            raise ValueError(f"natlab topology: bw={bw!r} is not a positive rate in Mbit/s")
        if nat not in NAT_KINDS:
            raise ValueError(f"natlab topology: nat={nat!r} is not one of {', '.join(NAT_KINDS)}")
        s1 = self._access_switch(nat)
        s2 = self.addSwitch("s2", cls=OVSBridge, datapath="user", dpid=dpid_text(S2_DPID))
        r1 = self._router(nat, globals)
        for i in range(1, clients + 1):
            h = self.addHost(f"h{i}", cls=NatlabHost, ip=f"{client_ip(i)}/24", defaultRoute=f"via {GATEWAY_IP}")
            self.addLink(h, s1)
        inside, outside = ({}, {}) if nat == "extensible" else self._router_intfs(globals)
        self.addLink(s1, r1, port1=S1_UPLINK_PORT, port2=R1_INSIDE_PORT, **inside)
        access = {"cls": TCLink, "bw": bw} if bw else {}
        self.addLink(r1, s2, port1=R1_OUTSIDE_PORT, **access, **outside)
        for j in range(1, servers + 1):
            self.addLink(self.addHost(f"srv{j}", cls=NatlabHost, ip=f"{server_ip(j)}/24"), s2)
        sgw = self.addHost("sgw1", cls=GatewayHost, ip=f"{SGW_OUTSIDE_IP}/24")
        self.addLink(sgw, s2)
        ih1 = self.addHost("ih1", cls=NatlabHost, ip=f"{INTRANET_HOST_IP}/24", defaultRoute=f"via {SGW_INSIDE_IP}")
        self.addLink(sgw, ih1, params1={"ip": f"{SGW_INSIDE_IP}/24"})

    def _access_switch(self, nat: str) -> str:
        """s1: OpenFlow 1.3, fail mode secure, driven by the app (SAVI), unless no controller runs (classic)."""
        if nat == "extensible":
            return self.addSwitch("s1", datapath="user", protocols="OpenFlow13", dpid=dpid_text(S1_DPID), failMode="secure")
        return self.addSwitch("s1", cls=OVSBridge, datapath="user", dpid=dpid_text(S1_DPID))

    def _router(self, nat: str, globals: int) -> str:
        """r1: the OpenFlow switch, or a host whose lowest port (inside) gets the gateway address.

        Ports keep their numbers either way, so the interfaces are r1-eth1 (inside) and r1-eth2 (outside).
        """
        if nat == "extensible":
            # fail_mode secure (Mininet's default, said here so nothing changes it): while the controller is
            # away r1 keeps its flows and never falls back to L2 switching, which would leak private addresses.
            return self.addSwitch("r1", datapath="user", protocols="OpenFlow13", dpid=dpid_text(R1_DPID), failMode="secure")
        return self.addHost("r1", cls=ClassicNatRouter, ip=f"{GATEWAY_IP}/24", mac=R1_INSIDE_MAC,
                            outside=f"r1-eth{R1_OUTSIDE_PORT}", pool=tuple(global_ips(globals)))

    @staticmethod
    def _router_intfs(globals: int) -> tuple[dict, dict]:
        """Link options for the classic r1: its inside MAC, and its outside MAC and first global address."""
        outside = {"addr1": R1_OUTSIDE_MAC, "params1": {"ip": f"{global_ips(globals)[0]}/24"}}
        return {"addr2": R1_INSIDE_MAC}, outside


topos = {"natlab": NatlabTopo}
