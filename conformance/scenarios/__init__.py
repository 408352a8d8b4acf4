"""Scenarios, each a function (Context) -> [ScenarioResult], in the order they run."""

from conformance.scenarios.leases import lease_protocol, leased_traffic
from conformance.scenarios.napt import nat_auto, nat_drop

SCENARIOS = [nat_auto, nat_drop, lease_protocol, leased_traffic]

# The behaviours each scenario checks: a scenario that crashes reports an error for each of them.
nat_auto.covers = ("NAT-AUTO",)
nat_drop.covers = ("NAT-DROP",)
lease_protocol.covers = ("NAT-DEF", "NAT-HASALG", "NAT-ALLOC", "NAT-UNIQ", "CL-UNIQ", "NAT-ENTRY")
leased_traffic.covers = ("NAT-OUT", "NAT-IN", "NAT-RENEW", "NAT-DEALLOC", "NAT-EXPIRE", "NAT-DROP")
