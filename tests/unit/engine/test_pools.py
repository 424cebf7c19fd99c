"""Address pools: which address a road warrior gets, and when it gets it again."""

from __future__ import annotations

import ipaddress

from ikev1d.config import parse_config
from ikev1d.engine.pools import Pool, build_pools


def pool(addrs: str) -> Pool:
    cfg = parse_config(f'[pools.p]\naddrs = "{addrs}"\n')
    return Pool(cfg.pools["p"])


def owner(n: int) -> tuple[str, str, str]:
    return ("gw", f"client{n}", "")


def test_a_subnet_skips_network_and_broadcast() -> None:
    p = pool("10.3.0.0/30")
    assert p.size == 2
    assert str(p.acquire(owner(1))) == "10.3.0.1"
    assert str(p.acquire(owner(2))) == "10.3.0.2"
    assert p.acquire(owner(3)) is None
    assert (p.online, p.offline) == (2, 0)


def test_a_range() -> None:
    p = pool("10.3.0.10-10.3.0.11")
    assert [str(p.acquire(owner(n))) for n in (1, 2)] == ["10.3.0.10", "10.3.0.11"]
    assert p.acquire(owner(3)) is None


def test_the_same_owner_gets_the_same_address_online_or_offline() -> None:
    p = pool("10.3.0.0/24")
    first = p.acquire(owner(1))
    assert p.acquire(owner(1)) == first  # a renewal overlaps: held twice
    p.release(owner(1))
    assert (p.online, p.offline) == (1, 0)
    p.release(owner(1))
    assert (p.online, p.offline) == (0, 1)
    p.release(owner(1))  # once too often: nothing happens
    assert p.acquire(owner(2)) != first  # fresh addresses first
    assert p.acquire(owner(1)) == first


def test_a_full_pool_reassigns_the_oldest_offline_lease() -> None:
    p = pool("10.3.0.1-10.3.0.3")
    for n in (1, 2, 3):
        p.acquire(owner(n))
    p.release(owner(2))
    p.release(owner(1))
    assert str(p.acquire(owner(4))) == "10.3.0.2"  # client2 left first
    assert str(p.acquire(owner(5))) == "10.3.0.1"
    assert p.acquire(owner(6)) is None
    # client1's lease went to client5: client1 now finds the pool full.
    assert p.acquire(owner(1)) is None


def test_a_wanted_address_is_given_when_free() -> None:
    p = pool("10.3.0.0/24")
    assert str(p.acquire(owner(1), ipaddress.ip_address("10.3.0.77"))) == "10.3.0.77"
    assert str(p.acquire(owner(2), ipaddress.ip_address("10.3.0.77"))) == "10.3.0.1"
    assert str(p.acquire(owner(3), ipaddress.ip_address("10.9.0.1"))) == "10.3.0.2"


def test_a_reload_keeps_the_leases_the_new_pool_still_has() -> None:
    old = build_pools(parse_config('[pools.p]\naddrs = "10.3.0.0/24"\n').pools)
    a = old["p"].acquire(owner(1))
    b = old["p"].acquire(owner(2))
    old["p"].release(owner(2))
    new = build_pools(parse_config('[pools.p]\naddrs = "10.3.0.1-10.3.0.1"\n').pools, old)
    p = new["p"]
    assert (p.online, p.offline) == (1, 0)  # 10.3.0.2 is outside the new range
    assert p.acquire(owner(1)) == a and b is not None
    assert p.acquire(owner(2)) is None


def test_ipv6() -> None:
    p = pool("fd00::/126")
    assert [str(p.acquire(owner(n))) for n in range(4)] == [
        "fd00::1", "fd00::2", "fd00::3", "None"]
