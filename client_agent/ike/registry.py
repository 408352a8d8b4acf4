"""IKEv2 numbers, named after IANA's "Internet Key Exchange Version 2 (IKEv2) Parameters" registry.

One source for every number the codec and the state machine use (RFC 7296
section 3 and the registry's tables). Transform tables map a transform ID onto
what the crypto needs, so adding an algorithm is one row.
"""

from __future__ import annotations

from enum import IntEnum

from client_agent.ipsec.udpencap import NATT_PORT as NATT_PORT  # RFC 7296 section 2.23: IKE moves there behind a NAT

__pure__ = True

IKE_PORT = 500  # RFC 7296 section 2: IKE messages use UDP port 500
IKEV2_VERSION = 0x20  # major 2, minor 0 (section 3.1)
HEADER_LEN = 28
GENERIC_HEADER_LEN = 4


class ExchangeType(IntEnum):
    """Section 3.1, IANA "IKEv2 Exchange Types"."""

    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37


class Flag(IntEnum):
    """Header flags, section 3.1."""

    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class PayloadType(IntEnum):
    """Section 3.2, IANA "IKEv2 Payload Types"."""

    NONE = 0
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR_ID = 43
    TSi = 44
    TSr = 45
    SK = 46
    CP = 47
    EAP = 48
    SKF = 53


class ProtocolId(IntEnum):
    """Section 3.3.1, IANA "IKEv2 Security Protocol Identifiers"."""

    IKE = 1
    AH = 2
    ESP = 3


class TransformType(IntEnum):
    """Section 3.3.2, IANA "Transform Type Values"."""

    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4
    ESN = 5


class Encr(IntEnum):
    """Transform Type 1 IDs used here."""

    ENCR_AES_CBC = 12
    ENCR_AES_GCM_16 = 20


class Prf(IntEnum):
    """Transform Type 2 IDs used here."""

    PRF_HMAC_SHA1 = 2
    PRF_HMAC_SHA2_256 = 5


class Integ(IntEnum):
    """Transform Type 3 IDs used here."""

    NONE = 0
    AUTH_HMAC_SHA1_96 = 2
    AUTH_HMAC_SHA2_256_128 = 12


class DhGroup(IntEnum):
    """Transform Type 4 IDs used here (RFC 3526, RFC 5903, RFC 8031)."""

    MODP_2048 = 14
    ECP_256 = 19
    CURVE25519 = 31


class Esn(IntEnum):
    """Transform Type 5."""

    NO_ESN = 0
    ESN = 1


# Each transform type's ID table, so a name is looked up in one place (proposals.transform).
TRANSFORM_IDS: dict[TransformType, type[IntEnum]] = {
    TransformType.ENCR: Encr, TransformType.PRF: Prf, TransformType.INTEG: Integ, TransformType.DH: DhGroup,
    TransformType.ESN: Esn,
}

KEY_LENGTH_ATTRIBUTE = 14  # section 3.3.5, the only attribute: TV format (AF=1)


class IdType(IntEnum):
    """Section 3.5, IANA "IKEv2 Identification Payload ID Types"."""

    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_RFC822_ADDR = 3
    ID_IPV6_ADDR = 5
    ID_KEY_ID = 11


class AuthMethod(IntEnum):
    """Section 3.8."""

    SHARED_KEY_MIC = 2


class TsType(IntEnum):
    """Section 3.13.1."""

    TS_IPV4_ADDR_RANGE = 7


class Notify(IntEnum):
    """Section 3.10.1, IANA "IKEv2 Notify Message Types" (errors < 16384, status above)."""

    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395


ERROR_NOTIFY_LIMIT = 16384  # types below this are errors (section 3.10.1)
