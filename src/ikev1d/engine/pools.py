"""Address pools for Mode Config servers (draft-dukes-ike-mode-cfg-02 section 3.3).

Pure bookkeeping, no I/O. A lease ties an address to a road warrior's
identity (our ID, its ID, its XAUTH user): the same identity gets the same
address again, also after a reconnect. A lease is *online* while an ISAKMP SA
holds it and *offline* after; offline leases are kept for their owner and
reassigned, oldest first, only when no address was never handed out.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass

from ikev1d.config import PoolConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Owner = tuple[str, str, str]
"""Who a lease is for: (our ID, the peer's ID, its XAUTH user or "")."""


@dataclass
class Lease:
    address: IPAddress
    owner: Owner
    holders: int = 0
    """ISAKMP SAs holding it now (a renewal overlaps its predecessor)."""
    offline_since: int = 0
    """Order in which leases went offline: the lowest is reassigned first."""


class Pool:
    """One ``[pools.NAME]``: ``first`` to ``last`` inclusive."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.name = config.name
        self._first = int(config.first)
        self._size = config.size
        self._version = config.first.version
        self._next_fresh = 0
        """Offset of the next address never handed out."""
        self._by_owner: dict[Owner, Lease] = {}
        self._by_address: dict[int, Lease] = {}
        self._clock = itertools.count(1)

    @property
    def version(self) -> int:
        return self._version

    @property
    def size(self) -> int:
        return self._size

    @property
    def online(self) -> int:
        return sum(1 for lease in self._by_owner.values() if lease.holders)

    @property
    def offline(self) -> int:
        return sum(1 for lease in self._by_owner.values() if not lease.holders)

    def leases(self) -> list[Lease]:
        return sorted(self._by_owner.values(), key=lambda lease: int(lease.address))

    def contains(self, address: IPAddress) -> bool:
        return (address.version == self._version
                and 0 <= int(address) - self._first < self._size)

    def acquire(self, owner: Owner, wanted: IPAddress | None = None) -> IPAddress | None:
        """An address for ``owner`` (held until ``release``), or None when the pool
        is exhausted. The owner's own lease first; ``wanted`` (the address a client
        asks for) if it is free; else a fresh address; else the oldest offline lease."""
        lease = self._by_owner.get(owner)
        if lease is None:
            lease = self._new_lease(owner, wanted)
            if lease is None:
                return None
        lease.holders += 1
        return lease.address

    def _new_lease(self, owner: Owner, wanted: IPAddress | None) -> Lease | None:
        address: int | None = None
        if wanted is not None and self.contains(wanted) and int(wanted) not in self._by_address:
            address = int(wanted)
        while address is None and self._next_fresh < self._size:
            candidate = self._first + self._next_fresh
            self._next_fresh += 1
            if candidate not in self._by_address:
                address = candidate
        if address is None:
            offline = [lease for lease in self._by_owner.values() if not lease.holders]
            if not offline:
                return None
            oldest = min(offline, key=lambda lease: lease.offline_since)
            del self._by_owner[oldest.owner]
            address = int(oldest.address)
        lease = Lease(ipaddress.ip_address(address), owner)
        self._by_owner[owner] = lease
        self._by_address[address] = lease
        return lease

    def release(self, owner: Owner) -> None:
        """An ISAKMP SA that held ``owner``'s lease is gone; the lease stays, offline
        once no SA holds it."""
        lease = self._by_owner.get(owner)
        if lease is None or lease.holders == 0:
            return
        lease.holders -= 1
        if lease.holders == 0:
            lease.offline_since = next(self._clock)

    def adopt(self, old: Pool) -> None:
        """Take over the leases of this pool's previous configuration (a reload)
        whose addresses it still has."""
        for lease in sorted(old._by_owner.values(), key=lambda x: x.offline_since):
            if not self.contains(lease.address) or lease.owner in self._by_owner:
                continue
            if int(lease.address) in self._by_address:
                continue
            copy = Lease(lease.address, lease.owner, lease.holders, next(self._clock))
            self._by_owner[lease.owner] = copy
            self._by_address[int(lease.address)] = copy
        # Addresses handed out before stay out of the fresh ones' way: _new_lease
        # skips taken addresses.


def build_pools(configs: dict[str, PoolConfig], old: dict[str, Pool] | None = None
                ) -> dict[str, Pool]:
    """The pools of a configuration, with the leases of ``old`` carried over by name."""
    pools = {name: Pool(config) for name, config in configs.items()}
    for name, pool in pools.items():
        previous = (old or {}).get(name)
        if previous is not None:
            pool.adopt(previous)
    return pools
