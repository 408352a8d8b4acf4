"""Proposals as data and their negotiation (RFC 7296 sections 2.7, 3.3).

A configuration names transforms the way IANA does (``ENCR_AES_CBC-256``,
``PRF_HMAC_SHA2_256``, ``AUTH_HMAC_SHA2_256_128``, ``MODP_2048``) or the way
strongSwan does (``aes256-sha256-modp2048``), and both become the same
:class:`~client_agent.ike.codec.Proposal`. :func:`choose` is the responder's
side of section 2.7: the first offered proposal whose every transform type has
an acceptable transform, reduced to one transform per type.
"""

from __future__ import annotations

from dataclasses import dataclass

from client_agent.ike.codec import Proposal, Transform
from client_agent.ike.crypto import INTEG_ALGORITHMS, IkeSuite, prf_length
from client_agent.ike.registry import TRANSFORM_IDS, DhGroup, Encr, Esn, Integ, Prf, ProtocolId, TransformType

_ENCR_KEY_BITS = {Encr.ENCR_AES_CBC: (128, 256), Encr.ENCR_AES_GCM_16: (128, 256)}

# strongSwan's proposal keywords (swanctl.conf), so the interop tests can say the same thing to both sides.
_KEYWORDS: dict[str, Transform] = {
    "aes128": Transform(TransformType.ENCR, Encr.ENCR_AES_CBC, 128),
    "aes256": Transform(TransformType.ENCR, Encr.ENCR_AES_CBC, 256),
    "aes128gcm16": Transform(TransformType.ENCR, Encr.ENCR_AES_GCM_16, 128),
    "aes256gcm16": Transform(TransformType.ENCR, Encr.ENCR_AES_GCM_16, 256),
    "sha1": Transform(TransformType.INTEG, Integ.AUTH_HMAC_SHA1_96),
    "sha256": Transform(TransformType.INTEG, Integ.AUTH_HMAC_SHA2_256_128),
    "prfsha1": Transform(TransformType.PRF, Prf.PRF_HMAC_SHA1),
    "prfsha256": Transform(TransformType.PRF, Prf.PRF_HMAC_SHA2_256),
    "modp2048": Transform(TransformType.DH, DhGroup.MODP_2048),
    "ecp256": Transform(TransformType.DH, DhGroup.ECP_256),
    "x25519": Transform(TransformType.DH, DhGroup.CURVE25519),
    "curve25519": Transform(TransformType.DH, DhGroup.CURVE25519),
    "noesn": Transform(TransformType.ESN, Esn.NO_ESN),
}
_INTEG_TO_PRF = {Integ.AUTH_HMAC_SHA1_96: Prf.PRF_HMAC_SHA1, Integ.AUTH_HMAC_SHA2_256_128: Prf.PRF_HMAC_SHA2_256}


def transform(name: str) -> Transform:
    """A transform by IANA name (``ENCR_AES_CBC-128``, ``PRF_HMAC_SHA1``, ``MODP_2048``) or strongSwan keyword."""
    key = name.strip()
    if key.lower() in _KEYWORDS:
        return _KEYWORDS[key.lower()]
    base, _, bits = key.upper().partition("-")
    for t_type, enum in TRANSFORM_IDS.items():
        if base in enum.__members__:
            return _checked(Transform(t_type, enum[base], int(bits) if bits.isdigit() else None), name)
    raise ValueError(f"unknown transform {name!r}")


def _checked(t: Transform, name: str) -> Transform:
    if t.type == TransformType.ENCR and t.key_length not in _ENCR_KEY_BITS[Encr(t.id)]:
        raise ValueError(f"transform {name!r}: key length must be one of {_ENCR_KEY_BITS[Encr(t.id)]} bits")
    return t


def parse_proposal(text: str, protocol: ProtocolId, number: int = 1) -> Proposal:
    """A proposal from ``-``/``+``-separated transform names (``aes128-sha256-modp2048``).

    For IKE without an explicit PRF the PRF follows the integrity algorithm (as
    strongSwan does); ESP and AH get NO_ESN unless one is named.
    """
    names = [n for n in text.replace("+", " ").replace(",", " ").split() if n] if "+" in text or " " in text \
        else _split_dashes(text)
    transforms = [transform(n) for n in names]
    types = {t.type for t in transforms}
    if protocol == ProtocolId.IKE and TransformType.PRF not in types:
        transforms += [Transform(TransformType.PRF, _INTEG_TO_PRF[Integ(t.id)])
                       for t in transforms if t.type == TransformType.INTEG]
    if protocol != ProtocolId.IKE and TransformType.ESN not in types:
        transforms.append(Transform(TransformType.ESN, Esn.NO_ESN))
    proposal = Proposal(number, protocol, b"", tuple(sorted(transforms, key=lambda t: t.type)))
    problem = _incomplete(proposal)
    if problem:
        raise ValueError(f"proposal {text!r}: {problem}")
    return proposal


def _split_dashes(text: str) -> list[str]:
    """Split ``aes128-sha256`` and ``ENCR_AES_CBC-128-PRF_HMAC_SHA1``: a bare number belongs to the name before it."""
    names: list[str] = []
    for part in text.split("-"):
        if part.isdigit() and names:
            names[-1] += f"-{part}"
        elif part:
            names.append(part)
    return names


def _incomplete(proposal: Proposal) -> str | None:
    """Why ``proposal`` cannot be negotiated, or None (mandatory types: section 3.3.3)."""
    types = {t.type for t in proposal.transforms}
    aead = any(t.id == Encr.ENCR_AES_GCM_16 for t in proposal.of_type(TransformType.ENCR))
    required = {ProtocolId.IKE: {TransformType.ENCR, TransformType.PRF, TransformType.DH},
                ProtocolId.ESP: {TransformType.ENCR}, ProtocolId.AH: {TransformType.INTEG}}[ProtocolId(proposal.protocol)]
    if proposal.protocol != ProtocolId.AH and not aead:
        required = required | {TransformType.INTEG}
    missing = required - types
    if missing:
        return f"no {', '.join(TransformType(t).name for t in sorted(missing))} transform"
    if proposal.protocol == ProtocolId.AH and TransformType.ENCR in types:
        return "AH has no encryption"
    if aead and any(t.id != Integ.NONE for t in proposal.of_type(TransformType.INTEG)):
        return "an AEAD cipher takes no integrity transform"
    return None


def choose(offered: tuple[Proposal, ...], acceptable: tuple[Proposal, ...]) -> Proposal | None:
    """Section 2.7: the first offered proposal we can accept whole, one transform per type, its number kept."""
    ours = {(p.protocol, t) for p in acceptable for t in p.transforms}
    for proposal in offered:
        picked = []
        for t_type in sorted({t.type for t in proposal.transforms}):
            match = next((t for t in proposal.of_type(t_type) if (proposal.protocol, t) in ours), None)
            if match is None:
                break
            picked.append(match)
        else:
            candidate = Proposal(proposal.number, proposal.protocol, proposal.spi, tuple(picked))
            if proposal.protocol in {p.protocol for p in acceptable} and _incomplete(candidate) is None:
                return candidate
    return None


def accepted_is_offered(chosen: Proposal, offered: tuple[Proposal, ...]) -> bool:
    """The initiator's check of the responder's choice: one proposal, every transform one we offered."""
    mine = next((p for p in offered if p.number == chosen.number and p.protocol == chosen.protocol), None)
    types = [t.type for t in chosen.transforms]
    return (mine is not None and len(types) == len(set(types)) and set(chosen.transforms) <= set(mine.transforms)
            and _incomplete(chosen) is None)


def ike_suite(chosen: Proposal) -> IkeSuite:
    """The IKE SA's transforms from a chosen (one transform per type) proposal."""
    encr = chosen.of_type(TransformType.ENCR)[0]
    integ = chosen.of_type(TransformType.INTEG)
    prf = chosen.of_type(TransformType.PRF)[0].id
    prf_length(prf)
    return IkeSuite(encr.id, encr.key_length or 128, prf, integ[0].id if integ else Integ.NONE,
                    chosen.of_type(TransformType.DH)[0].id)


@dataclass(frozen=True)
class ChildSuite:
    """A CHILD_SA's transforms; names are the IANA names :mod:`client_agent.ipsec.algorithms` knows."""

    protocol: ProtocolId
    encr: int | None
    encr_key_bits: int
    integ: int
    dh: int | None = None

    @property
    def encr_keymat_len(self) -> int:
        if self.encr is None:
            return 0
        return self.encr_key_bits // 8 + (4 if self.encr == Encr.ENCR_AES_GCM_16 else 0)

    @property
    def integ_key_len(self) -> int:
        return 0 if self.integ == Integ.NONE else INTEG_ALGORITHMS[self.integ][1]

    @property
    def encryption_name(self) -> str:
        return "ENCR_NULL" if self.encr is None else Encr(self.encr).name

    @property
    def integrity_name(self) -> str:
        return Integ(self.integ).name


def child_suite(chosen: Proposal) -> ChildSuite:
    encr = chosen.of_type(TransformType.ENCR)
    integ = chosen.of_type(TransformType.INTEG)
    dh = chosen.of_type(TransformType.DH)
    return ChildSuite(ProtocolId(chosen.protocol), encr[0].id if encr else None,
                      (encr[0].key_length or 128) if encr else 0, integ[0].id if integ else Integ.NONE,
                      dh[0].id if dh and dh[0].id else None)
