"""natlab's IPsec stack, sans-IO: ESP (RFC 4303) and AH (RFC 4302) for IPv4, SPD and SAD (RFC 4301).

Bytes in, bytes out: no sockets, files or clocks. A datapath holds a
:class:`SAD` and an :class:`SPD` and calls :func:`outbound`/:func:`inbound`
(or :func:`encapsulate`/:func:`decapsulate` when it picks SAs itself), counting
:class:`IPsecError` drops by their ``reason``.

Modules: ``errors`` (drop reasons), ``algorithms`` (transform tables),
``crypto`` (keyed cipher and MAC objects), ``sa`` (parameters and running
state), ``replay`` (anti-replay window), ``ipheader`` (IPv4 header bytes),
``esp``, ``ah``, ``sad``, ``spd``, ``processing`` (RFC 4301 section 5),
``keyfile`` (Wireshark ``esp_sa``), ``suites`` (every valid algorithm
combination), ``bench`` (packets per second).
"""

from client_agent.ipsec.errors import DropReason, IPsecError
from client_agent.ipsec.keyfile import esp_sa_file, esp_sa_line
from client_agent.ipsec.processing import Decapsulated, decapsulate, encapsulate, inbound, outbound
from client_agent.ipsec.sa import Mode, Protocol, SAState, SecurityAssociation
from client_agent.ipsec.sad import SAD
from client_agent.ipsec.spd import SPD, Action, Policy, Selector

__pure__ = True  # sans-IO: the purity test checks it (and, in an __init__, its whole package)

__all__ = [
    "SAD", "SPD", "Action", "Decapsulated", "DropReason", "IPsecError", "Mode", "Policy", "Protocol", "SAState",
    "SecurityAssociation", "Selector", "decapsulate", "encapsulate", "esp_sa_file", "esp_sa_line", "inbound",
    "outbound",
]
