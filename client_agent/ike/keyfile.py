"""Key files for Wireshark and the SAD entries of negotiated CHILD_SAs.

Wireshark's ``ikev2_decryption_table`` UAT (next to ``esp_sa`` in the
configuration directory) takes 8 quoted fields per IKE SA::

    <SPIi hex>,<SPIr hex>,<SK_ei hex>,<SK_er hex>,"<encryption>",<SK_ai hex>,<SK_ar hex>,"<integrity>"

(byte fields unquoted, labels quoted, empty SK_a for AES-GCM)

with the labels of Wireshark 4.0's ``packet-isakmp.c`` (below). CHILD_SAs
become :class:`~client_agent.ipsec.sa.SecurityAssociation` pairs, so the
existing ``esp_sa`` writer and datapath take them as they take manual keys.
"""

from __future__ import annotations

import functools

from client_agent.ike.crypto import IkeKeys, IkeSuite
from client_agent.ike.events import ChildSa
from client_agent.ike.registry import Encr, Integ
from client_agent.ipsec.sa import Mode, Protocol, SecurityAssociation

FILENAME = "ikev2_decryption_table"

_ENCRYPTION = {
    (Encr.ENCR_AES_CBC, 128): "AES-CBC-128 [RFC3602]",
    (Encr.ENCR_AES_CBC, 256): "AES-CBC-256 [RFC3602]",
    (Encr.ENCR_AES_GCM_16, 128): "AES-GCM-128 with 16 octet ICV [RFC5282]",
    (Encr.ENCR_AES_GCM_16, 256): "AES-GCM-256 with 16 octet ICV [RFC5282]",
}
_INTEGRITY = {
    Integ.NONE: "NONE [RFC4306]",
    Integ.AUTH_HMAC_SHA1_96: "HMAC_SHA1_96 [RFC2404]",
    Integ.AUTH_HMAC_SHA2_256_128: "HMAC_SHA2_256_128 [RFC4868]",
}


def ikev2_line(spi_i: bytes, spi_r: bytes, suite: IkeSuite, keys: IkeKeys) -> str:
    """One ``ikev2_decryption_table`` line (SK_e includes GCM's salt, as Wireshark expects)."""
    fields = (spi_i.hex(), spi_r.hex(), keys.sk_ei.hex(), keys.sk_er.hex(),
              f'"{_ENCRYPTION[(Encr(suite.encr), suite.encr_key_bits)]}"', keys.sk_ai.hex(), keys.sk_ar.hex(),
              f'"{_INTEGRITY[Integ(suite.integ)]}"')
    return ",".join(fields)


def security_associations(child: ChildSa, local: str, remote: str) -> tuple[SecurityAssociation, SecurityAssociation]:
    """(inbound, outbound) SAD entries for ``child`` between the outer addresses ``local`` and ``remote``."""
    protocol = Protocol.ESP if child.protocol == 3 else Protocol.AH
    mode = Mode(child.mode)
    suite = child.suite
    sa = functools.partial(SecurityAssociation, protocol=protocol, mode=mode, encryption=suite.encryption_name,
                           integrity=suite.integrity_name, udp_encap=child.udp_encap)
    inbound = sa(spi=child.inbound_spi, enc_key=child.encr_in, auth_key=child.integ_in, src=remote, dst=local)
    outbound = sa(spi=child.outbound_spi, enc_key=child.encr_out, auth_key=child.integ_out, src=local, dst=remote)
    return inbound, outbound
