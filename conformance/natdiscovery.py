"""coturn's ``turnutils_natdiscovery`` (RFC 5780 NAT behaviour discovery), an oracle nobody here wrote:
how to run it against ``turnserver`` and how to read what it prints.

The server needs two addresses (RFC 5780 section 4.1: a CHANGE-REQUEST answered from the
other address and port). The client prints one conclusion per test, framed by lines of '=':
"NAT with Endpoint Independent Mapping!", "... Address Dependent Filtering!", and for
hairpinning "Received a request (maybe a successful hairpinning)" when its second socket's
request to the first one's mapped address came back in (else "STUN receive timeout..").
"""

from __future__ import annotations

import re

STUN_PORT = 3478  # RFC 5389 section 18.4
MAPPING = {"Endpoint Independent Mapping": "endpoint-independent",
           "Address Dependent Mapping": "address-dependent",
           "Address and Port Dependent Mapping": "address-and-port-dependent"}
FILTERING = {"Endpoint Independent Filtering": "endpoint-independent",
             "Address Dependent Filtering": "address-dependent",
             "Address and Port Dependent Filtering": "address-and-port-dependent"}
HAIRPIN_SEEN = "Received a request (maybe a successful hairpinning)"


def server_argv(addresses: tuple[str, str], port: int = STUN_PORT) -> list[str]:
    """turnserver with no config file, listening on both addresses (RFC 5780 needs two), STUN only."""
    return ["turnserver", "-n", *(f"--listening-ip={a}" for a in addresses), f"--listening-port={port}",
            "--no-tls", "--no-dtls", "--no-cli", "--log-file=stdout", "--simple-log"]


def client_argv(server: str, test: str, port: int = STUN_PORT) -> list[str]:
    """One discovery test: ``-m`` mapping, ``-f`` filtering, ``-H`` hairpinning."""
    return ["turnutils_natdiscovery", test, "-p", str(port), server]


def classify(mapping_out: str, filtering_out: str, hairpin_out: str) -> dict[str, str]:
    """The three classifications from the three runs' output; "unknown" when a run concluded nothing
    (a server that is not RFC 5780-capable, or lost answers), so a broken oracle never agrees by accident."""
    return {"mapping": _conclusion(mapping_out, MAPPING),
            "filtering": _conclusion(filtering_out, FILTERING),
            "hairpinning": "yes" if HAIRPIN_SEEN in hairpin_out else ("no" if "Hairpinning" in hairpin_out
                                                                       else "unknown")}


def _conclusion(out: str, names: dict[str, str]) -> str:
    if "No NAT!" in out:
        return "no-nat"
    found = re.findall(r"NAT with (.+?)!", out)
    for phrase in reversed(found):
        if phrase in names:
            return names[phrase]
    return "unknown"
