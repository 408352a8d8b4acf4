"""Perfect forward secrecy for CHILD_SAs (RFC 7296 sections 1.3.1, 1.3.2, 2.17): which group, and when to refuse.

A CHILD_SA proposal that carries a Diffie-Hellman transform asks for PFS: its
CREATE_CHILD_SA exchanges carry KE payloads, and KEYMAT becomes
prf+(SK_d, g^ir (new) | Ni | Nr). IKE_AUTH has no KE, so the CHILD_SA created
there never has one: its proposals go without the DH transform (section 1.2,
"SHOULD omit the whole transform substructure instead of sending value NONE").

The responder's rules (section 1.3): a proposal whose group differs from the
KE payload's is answered with INVALID_KE_PAYLOAD naming the group it wants;
an offer without the group our policy requires, or a KE without any group to
use it for, with NO_PROPOSAL_CHOSEN (PFS is never silently dropped). These are
pure functions over proposals and payloads, so each rule has its own unit test.
"""

from __future__ import annotations

from client_agent.ike.codec import KePayload, Proposal, Transform
from client_agent.ike.registry import Notify, TransformType

__pure__ = True

NO_GROUP = 0  # Transform Type 4 ID "NONE" (section 3.3.2): no Diffie-Hellman for this CHILD_SA


def dh_group(proposal: Proposal) -> int | None:
    """The chosen (one transform per type) proposal's group, or None: no DH transform, or NONE."""
    groups = [t.id for t in proposal.of_type(TransformType.DH) if t.id != NO_GROUP]
    return groups[0] if groups else None


def offered_groups(proposals: tuple[Proposal, ...]) -> list[int]:
    """Every group our proposals name, in preference order (the first one is what KEi is made in)."""
    out: list[int] = []
    for proposal in proposals:
        out += [t.id for t in proposal.of_type(TransformType.DH) if t.id != NO_GROUP and t.id not in out]
    return out


def without_dh(proposals: tuple[Proposal, ...]) -> tuple[Proposal, ...]:
    """The proposals for IKE_AUTH: no DH transform at all (section 1.2), everything else kept."""
    return tuple(Proposal(p.number, p.protocol, p.spi, tuple(t for t in p.transforms if t.type != TransformType.DH))
                 for p in proposals)


def prefer_group(proposals: tuple[Proposal, ...], group: int | None) -> tuple[Proposal, ...]:
    """Offered proposals with the KE payload's group moved first, so that a responder that accepts it
    picks it rather than answering INVALID_KE_PAYLOAD for a group the initiator also offered (section 1.3)."""
    if group is None:
        return proposals

    def key(t: Transform) -> int:
        return 0 if t.type == TransformType.DH and t.id == group else 1

    return tuple(Proposal(p.number, p.protocol, p.spi, tuple(sorted(p.transforms, key=key))) for p in proposals)


def pfs_required(protocol: int, acceptable: tuple[Proposal, ...]) -> bool:
    """Our policy for ``protocol`` demands PFS: every acceptable proposal of it names a group."""
    mine = [p for p in acceptable if p.protocol == protocol]
    return bool(mine) and all(dh_group(p) is not None for p in mine)


def responder_refusal(chosen: Proposal, ke: KePayload | None,
                      acceptable: tuple[Proposal, ...]) -> tuple[Notify, bytes, str] | None:
    """Why a CREATE_CHILD_SA request must be refused: (notify, its data, counter reason), or None to go on.

    Section 1.3: the chosen group and the KE payload must agree; a missing KE
    or one of another group gets INVALID_KE_PAYLOAD with the group we chose (the
    initiator retries with it); no group where our policy needs one, or a KE
    where the chosen proposal has none, gets NO_PROPOSAL_CHOSEN."""
    group = dh_group(chosen)
    if group is None and pfs_required(chosen.protocol, acceptable):
        return Notify.NO_PROPOSAL_CHOSEN, b"", "pfs_required"
    if group is None:
        return (Notify.NO_PROPOSAL_CHOSEN, b"", "ke_without_pfs") if ke is not None else None
    if ke is None or ke.group != group:
        return Notify.INVALID_KE_PAYLOAD, group.to_bytes(2, "big"), "invalid_ke_payload"
    return None


def initiator_problem(chosen: Proposal, offered: tuple[Proposal, ...], sent_group: int | None,
                      ke: KePayload | None) -> str | None:
    """Why the responder's CREATE_CHILD_SA answer cannot be used, or None (section 1.3.1, from our side).

    The answer must keep PFS if our proposal of that number asked for it (no
    downgrade), use the group our KEi was in, and carry KEr in it."""
    group = dh_group(chosen)
    mine = next((p for p in offered if p.number == chosen.number and p.protocol == chosen.protocol), None)
    if group is None:
        if mine is not None and dh_group(mine) is not None and NO_GROUP not in {
                t.id for t in mine.of_type(TransformType.DH)}:
            return "pfs_dropped_by_responder"
        return "unexpected_ke" if ke is not None else None
    if group != sent_group:
        return "ke_group_mismatch"
    if ke is None or ke.group != group:
        return "need_one_KePayload"
    return None
