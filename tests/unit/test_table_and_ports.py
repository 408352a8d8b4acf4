"""The translation table (FIG. 6) and the global port spaces."""

import random

import pytest

from nat_app.ports import PortSpace
from nat_app.table import ANY, EntryKind, TableConflict, TranslationTable


def add(table, **kw):
    args = dict(kind=EntryKind.CLIENT_ALG, protocol=50, private_ip="10.0.0.1", private_gpn=None,
                global_ip="203.0.113.1", global_gpn=0x1000, foreign="203.0.113.100", now=0.0)
    args.update(kw)
    return table.add(**args)


def test_lookups_both_ways_with_fallback_to_any():
    t = TranslationTable()
    exact = add(t, private_gpn=5, foreign="203.0.113.100")
    wild = add(t, private_gpn=6, global_gpn=0x2000, foreign=ANY)
    assert t.lookup_out(50, "10.0.0.1", 5, "203.0.113.100") is exact
    assert t.lookup_out(50, "10.0.0.1", 5, "203.0.113.101") is None
    assert t.lookup_out(50, "10.0.0.1", 6, "203.0.113.101") is wild
    assert t.lookup_in(50, "203.0.113.1", 0x2000, "203.0.113.77") is wild
    assert t.lookup_in(50, "203.0.113.1", 0x1000, "203.0.113.100") is exact
    t.check_invariants()


def test_nat_uniq_one_private_per_global_gpn_protocol_and_foreign():
    t = TranslationTable()
    add(t, private_ip="10.0.0.1")
    with pytest.raises(TableConflict):
        add(t, private_ip="10.0.0.2")  # same global GPN, protocol and foreign
    add(t, private_ip="10.0.0.2", foreign="203.0.113.101")  # another foreign: allowed
    assert len(t) == 2
    t.check_invariants()


def test_expiry_pops_due_entries_only_and_skips_stale_renewals():
    t = TranslationTable()
    a = add(t, private_gpn=1, global_gpn=1, expires=10.0)
    b = add(t, private_gpn=2, global_gpn=2, expires=20.0)
    t.set_expiry(a.id, 30.0)  # renewed: the old heap item is stale
    assert t.pop_expired(15.0) == []
    assert t.pop_expired(25.0) == [b]
    assert t.next_expiry() == 30.0
    assert t.pop_expired(30.0) == [a] and len(t) == 0
    t.check_invariants()


def test_private_hosts_sharing_a_triple_are_counted():
    t = TranslationTable()
    a = add(t, private_ip="10.0.0.1", private_gpn=1, global_gpn=1)
    add(t, private_ip="10.0.0.1", private_gpn=2, global_gpn=2)
    add(t, private_ip="10.0.0.2", private_gpn=3, global_gpn=3)
    assert t.private_hosts_of(50, "203.0.113.1", "203.0.113.100") == {"10.0.0.1", "10.0.0.2"}
    t.remove(a.id)
    assert t.private_hosts_of(50, "203.0.113.1", "203.0.113.100") == {"10.0.0.1", "10.0.0.2"}
    t.check_invariants()


def test_port_preserved_when_free_random_otherwise():
    space = PortSpace(rng=random.Random(3))
    assert space.reserve(0, preferred=40000) == 40000
    others = [space.reserve(0, preferred=40000) for _ in range(20)]
    assert 40000 not in others and len(set(others)) == 20
    assert sorted(others) != list(range(others[0], others[0] + 20))  # not sequential (RFC 6056)


def test_released_port_rests_for_the_quarantine():
    space = PortSpace(quarantine=120)
    space.reserve(0, preferred=5000)
    space.release(5000, now=10)
    assert not space.claim(5000, now=129)
    assert space.claim(5000, now=130)


def test_exhausted_space_says_none():
    space = PortSpace(low=1024, high=1027, rng=random.Random(0))
    assert sorted(space.reserve(0) for _ in range(4)) == [1024, 1025, 1026, 1027]
    assert space.reserve(0) is None


def test_a_resting_port_goes_back_only_to_the_host_that_released_it():
    """RFC 6888 REQ-8's quarantine keeps a port from another host; a restarted agent takes its leases back."""
    space = PortSpace(20000, 20010, quarantine=120.0, rng=random.Random(1))
    assert space.claim(20000, 0.0, owner="10.0.0.1")
    space.release(20000, 1.0, owner="10.0.0.1")
    assert not space.claim(20000, 2.0, owner="10.0.0.2")  # another host waits out the quarantine
    assert space.reserve(2.0, preferred=20000, owner="10.0.0.2") != 20000
    assert not space.claim(20000, 2.0)  # an anonymous (NAPT) claim too
    assert space.claim(20000, 2.0, owner="10.0.0.1")  # the same host takes it back at once
    assert not space.claim(20000, 3.0, owner="10.0.0.1")  # and then it is in use


def test_a_port_released_anonymously_rests_for_everyone():
    space = PortSpace(20000, 20010, quarantine=120.0, rng=random.Random(1))
    assert space.claim(20000, 0.0)
    space.release(20000, 1.0)
    assert not space.claim(20000, 2.0, owner="10.0.0.1")
    assert space.claim(20000, 122.0, owner="10.0.0.2")  # after the quarantine, anyone
