"""Scenarios, each a function (Context) -> [ScenarioResult], in the order they run."""

from conformance.scenarios.behave import behave
from conformance.scenarios.client import (
    client_classic,
    client_controls,
    client_matrix,
    client_noalg,
    client_noverify,
    client_renew,
)
from conformance.scenarios.leases import lease_protocol, leased_traffic
from conformance.scenarios.napt import nat_auto, nat_drop

# The client scenarios come before the lease scenarios, whose long leases would pin h1 to a global IP
# (CL-SPI: "keeping the same global IP") other than the one the clients' manual-key configs name.
SCENARIOS = [nat_auto, nat_drop, client_matrix, client_renew, client_controls, client_noalg, client_noverify,
             lease_protocol, leased_traffic, behave, client_classic]

# The behaviours each scenario checks: a scenario that crashes reports an error for each of them.
nat_auto.covers = ("NAT-AUTO",)
nat_drop.covers = ("NAT-DROP",)
behave.covers = ("NAT-AUTO",)  # the BEHAVE ledger, one result per requirement (conformance/ledger.toml)
lease_protocol.covers = ("NAT-DEF", "NAT-HASALG", "NAT-ALLOC", "NAT-UNIQ", "CL-UNIQ", "NAT-ENTRY")
leased_traffic.covers = ("NAT-OUT", "NAT-IN", "NAT-RENEW", "NAT-DEALLOC", "NAT-EXPIRE", "NAT-DROP")
client_matrix.covers = ("OUT-SEND", "OUT-PORT", "OUT-TUNADDR", "OUT-CSUM", "OUT-AH", "OUT-ALG", "IN-RECV", "IN-AH",
                         "IN-PORT", "IN-TUNADDR", "IN-CSUM", "IN-ALG", "CL-SPI", "CL-UNIQ")
client_controls.covers = ("CTRL-NOCOMP",)
client_renew.covers = ("CL-RENEW",)
client_classic.covers = ("CTRL-CLASSIC",)
client_noalg.covers = ("CTRL-NOALG",)
client_noverify.covers = ("CTRL-NOVERIFY",)
