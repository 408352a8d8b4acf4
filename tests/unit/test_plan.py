"""One addressing plan (netwire.plan): the topology, the NAT's defaults and the agents' example configs
all take their addresses from it, and nothing else in the house spells the gateway (issue 11)."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path

import pytest

from client_agent.agent_config import DEFAULT_LEASE_SERVER, examples, load
from nat_app.config import NatConfig
from nat_app.savi import SaviConfig
from netwire import plan

ROOT = Path(__file__).resolve().parents[2]
ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+(/\d+)?$")


def plan_addresses() -> set[str]:
    """Every address and prefix an example may name: the plan's hosts (first of each kind) and networks."""
    hosts = {plan.client_ip(1), plan.server_ip(1), plan.global_ips(1)[0], plan.GATEWAY_IP, plan.SGW_OUTSIDE_IP,
             plan.INTRANET_HOST_IP}
    return hosts | {f"{h}/32" for h in hosts} | {plan.INSIDE_NET, plan.OUTSIDE_NET, plan.INTRANET_NET}


def strings(value) -> list[str]:
    """Every string in a parsed TOML document, however deep."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def off_plan(path: Path) -> list[str]:
    named = [s for s in strings(tomllib.loads(path.read_text())) if ADDRESS.match(s)]
    return [s for s in named if s not in plan_addresses()]


@pytest.mark.parametrize("path", sorted(examples().glob("*.toml")), ids=lambda p: p.name)
def test_every_address_of_an_example_config_is_one_of_the_plan(path: Path) -> None:
    assert off_plan(path) == []
    nat = load(path).nat
    assert nat is None or nat.server == plan.GATEWAY_IP


def test_an_example_with_an_address_outside_the_plan_is_caught(tmp_path: Path) -> None:
    """The control: a typo in an example's address must fail the check above."""
    source = examples() / "esp-transport-nat-h1.toml"
    bad = tmp_path / "bad.toml"
    bad.write_text(source.read_text().replace(f'"{plan.GATEWAY_IP}"', '"10.0.0.253"'))
    assert off_plan(bad) == ["10.0.0.253"]


def test_the_nat_defaults_are_the_plan() -> None:
    c = NatConfig()
    assert (c.inside_net, c.gateway_ip, c.outside_net) == (plan.INSIDE_NET, plan.GATEWAY_IP, plan.OUTSIDE_NET)
    assert list(c.globals) == plan.global_ips(len(c.globals))
    assert (c.inside_port, c.outside_port) == (plan.R1_INSIDE_PORT, plan.R1_OUTSIDE_PORT)
    assert (c.inside_mac, c.outside_mac) == (plan.R1_INSIDE_MAC, plan.R1_OUTSIDE_MAC)
    assert (SaviConfig().dpid, SaviConfig().uplink_port) == (plan.S1_DPID, plan.S1_UPLINK_PORT)
    assert DEFAULT_LEASE_SERVER == plan.GATEWAY_IP


def test_the_plan_is_consistent() -> None:
    inside, outside = ipaddress.ip_network(plan.INSIDE_NET), ipaddress.ip_network(plan.OUTSIDE_NET)
    assert ipaddress.ip_address(plan.GATEWAY_IP) in inside and not inside.overlaps(outside)
    pool = set(plan.global_ips(plan.MAX_HOSTS))
    servers = {plan.server_ip(j) for j in range(1, plan.MAX_HOSTS + 1)}
    assert not pool & servers and plan.SGW_OUTSIDE_IP not in pool | servers
    assert all(ipaddress.ip_address(a) in outside for a in pool | servers)
    assert plan.MAX_HOSTS < plan.S1_UPLINK_PORT
    assert ipaddress.ip_address(plan.OFF_PLAN_IP) not in inside and ipaddress.ip_address(plan.OFF_PLAN_IP) not in outside


def test_the_gateway_address_is_spelled_in_one_module_only() -> None:
    """A grep for the gateway address in *.py finds netwire/plan.py alone (the issue's "done when")."""
    spelled = [p.relative_to(ROOT) for package in ("natlab", "netwire", "nat_app", "client_agent", "topo",
                                                   "conformance", "tests")
               for p in (ROOT / package).rglob("*.py") if plan.GATEWAY_IP in p.read_text()]
    assert spelled == [Path("netwire/plan.py")]
