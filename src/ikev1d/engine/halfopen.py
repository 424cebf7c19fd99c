"""The responder's half-open ISAKMP SAs: bounded, and fair to real peers.

A Main Mode responder cannot be stateless: HASH_I and HASH_R cover the
initiator's SA payload (RFC 2409 section 5), which message 3 does not repeat,
so message 1 must leave something behind. Anyone can send message 1 from any
source address; what it leaves is therefore bounded in three ways:

* per entry: the SA payload kept for the hashes is at most
  :data:`MAX_SA_OFFER` bytes, unknown Vendor IDs are counted, not kept, and a
  response cache keeps a digest of the request, not the request (so at most
  about 9 KB in all, whatever the attacker sends: tracemalloc counts 8,984
  bytes per entry for 21 KB requests with a 3.6 KB offer and 1,500 unknown
  Vendor IDs);
* in number: ``half_open_total`` entries (default 1024, so at most about 9 MB);
* in time: ``half_open_timeout`` (default 30 s).

When the table is full a new request is *admitted* and the globally oldest
entry evicted, entries still waiting for message 3 first. Refusing new
requests instead would let anyone who fills the table keep everybody out.

Why this lets a real peer in under a flood: a blind attacker spoofing source
addresses never sees our message 2, so it cannot send the message 3 that
carries our cookie; only a peer on the path that answers moves its entry on.
The real peer's entry must survive from our message 2 until its message 3
is processed: one round trip plus the peer's Diffie-Hellman computation,
typically well under 250 ms, plus the time message 3 waits in our receive
path. Entries are evicted by requests *processed*, not by requests sent: an
entry lives N / P seconds before it is the oldest, where P is the rate at
which the engine processes requests. While the daemon keeps up, P is the
flood rate R: with N = 1024 and R = 2,000/s that is 0.51 s, twice the
budget, and ``half_open_total`` scales it (size it as flood rate x (RTT + DH
time)). When R exceeds what the engine can process (about 700-1,000 message 1
per second on a busy 2-core machine), the daemon's receive path
(``ikev1d.daemon.udp``) bounds both terms: it reads the IKE socket until it
is empty at every wakeup and serves every message of an exchange under way
(message 3 carries our cookie) before any new request, so message 3 waits
at most one wakeup (the reading plus the budget's burst, 0.1 s), and while it
is behind it processes new requests only with a share of its time
(``RequestBudget``: P <= share / cost per request, some 150-800/s here
depending on the load) and drops the rest unprocessed. The entry then lives
at least N x cost / share seconds (about 1.4 s with the default N on an idle
machine, several seconds on a loaded one) however fast the flood. Read a
batch at a time instead, a daemon short of CPU let seconds of datagrams
queue in the kernel, and message 3 arrived after N requests had been
processed (measured: 7 s, a lockout). What the flood still decides is when the peer's
*message 1* is processed: the first transmission with probability about
P / R; a retransmission of a message 1 that was dropped goes ahead of fresh
requests (the receive path remembers the cookies it dropped), so a blind
flood with fresh cookies delays the peer by about one retransmission timeout
(4 s for strongSwan) at most, and would have to repeat its own requests to
compete with the retransmission.
Once message 3 arrives the entry is *proven* (the sender receives what we send
to that address) and only evicted after every unproven one.

``half_open_per_peer`` keeps one source address from holding most of the
table when it does not spoof (a misbehaving host, a NAT full of clients): a
source over its cap loses its own oldest entry instead of someone else's, but
only an entry older than :data:`PROTECT_S`. That window makes the cap no
lock-out: a flood spoofing the real peer's own address cannot evict the peer's
fresh entry through the cap, and falls back to the global eviction above,
where the real entry lives N / P seconds like any other. Sources that have
completed a handshake before get no per-source cap at all (a bounded set of
them is remembered), so a known peer is never evicted by its own address.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ikev1d.engine.ike_sa import IkeSa

#: The most SA payload bytes a half-open SA keeps (RFC 2409 section 5: SAi_b
#: goes into HASH_I and HASH_R). About a hundred transforms; larger offers are
#: refused.
MAX_SA_OFFER = 4096

#: How long a fresh entry is safe from its own source's cap: more than one
#: round trip plus the peer's Diffie-Hellman time, less than the usual
#: retransmission timeout.
PROTECT_S = 1.0

#: Source addresses that completed a handshake, remembered for favour.
KNOWN_SOURCES = 4096

Key = tuple[bytes, str]
"""(CKY-I, source address)."""


class HalfOpenTable:
    def __init__(self, total: int, per_source: int) -> None:
        self.total = total
        self.per_source = per_source
        self._unproven: OrderedDict[Key, IkeSa] = OrderedDict()
        self._proven: OrderedDict[Key, IkeSa] = OrderedDict()
        self._by_source: dict[str, dict[Key, None]] = {}
        self._known: OrderedDict[str, None] = OrderedDict()
        self.evicted = 0
        """Entries evicted to make room, in all (for the log and for tests)."""

    def __len__(self) -> int:
        return len(self._unproven) + len(self._proven)

    def get(self, key: Key) -> IkeSa | None:
        return self._unproven.get(key) or self._proven.get(key)

    def admit(self, key: Key, sa: IkeSa, now: float) -> list[IkeSa]:
        """Add a new entry; the entries evicted to make room (for the caller to drop)."""
        evicted: list[IkeSa] = []
        source = key[1]
        mine = self._by_source.get(source)
        while mine and len(mine) >= self.per_source and source not in self._known:
            oldest = next(iter(mine))
            victim = self.get(oldest)
            if victim is None or now - victim.created_at < PROTECT_S:
                break
            evicted.append(victim)
            self.remove(oldest)
            mine = self._by_source.get(source)
        while len(self) >= self.total:
            table = self._unproven or self._proven
            oldest_key, victim = next(iter(table.items()))
            evicted.append(victim)
            self.remove(oldest_key)
        self._unproven[key] = sa
        self._by_source.setdefault(source, {})[key] = None
        self.evicted += len(evicted)
        return evicted

    def prove(self, key: Key) -> None:
        """The sender answered our message 2 (message 3 with our cookie arrived)."""
        sa = self._unproven.pop(key, None)
        if sa is not None:
            self._proven[key] = sa

    def remove(self, key: Key) -> IkeSa | None:
        sa = self._unproven.pop(key, None) or self._proven.pop(key, None)
        if sa is None:
            return None
        mine = self._by_source.get(key[1])
        if mine is not None:
            mine.pop(key, None)
            if not mine:
                del self._by_source[key[1]]
        return sa

    def completed(self, source: str) -> None:
        """A handshake from this source authenticated: favour it from now on."""
        self._known[source] = None
        self._known.move_to_end(source)
        while len(self._known) > KNOWN_SOURCES:
            self._known.popitem(last=False)

    def sources(self) -> int:
        return len(self._by_source)
