"""The address and secret lookups of ``Config`` against their definition, and at scale.

``connections_for_addresses`` and ``psk_for`` answer from indexes built once per
configuration. Here they are compared with the definition written out plainly
(every connection and every secret visited, as the module docstring states the
rules) on generated configurations, and a gateway with thousands of peers is
checked not to visit every connection per lookup.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import TYPE_CHECKING

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ikev1d.config import Config, ConnectionConfig, SecretType, parse_config
from ikev1d.config.identity import ANY, Identity, IdentityError

if TYPE_CHECKING:
    from _collections_abc import dict_values

ADDRESSES = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "198.51.100.9", "2001:db8::2"]
REMOTES = [*ADDRESSES, "198.51.100.0/24", "192.0.2.0/30"]
LOCALS = ["192.0.2.1", "192.0.2.5", "2001:db8::1"]
IDS = ["192.0.2.2", "198.51.100.9", "gw.example.org", "branch.example.org", "%any"]


def _plain_candidates(cfg: Config, local_addr: str, remote_addr: str) -> list[str]:
    """The definition: matching local address (or none configured), then remote rank
    (exact 0, subnet 1, %any 2), specific local before any, then file order."""
    local = ipaddress.ip_address(local_addr)
    remote = ipaddress.ip_address(remote_addr)
    ranked = []
    for index, conn in enumerate(cfg.connections.values()):
        if conn.local_addrs and local not in [ipaddress.ip_address(a) for a in conn.local_addrs]:
            continue
        rank = _plain_rank(conn, remote)
        if rank is not None:
            ranked.append((rank, 0 if conn.local_addrs else 1, index, conn.name))
    return [item[3] for item in sorted(ranked)]


def _plain_rank(conn: ConnectionConfig, remote: ipaddress.IPv4Address | ipaddress.IPv6Address
                ) -> int | None:
    ranks = []
    for entry in conn.remote_addrs:
        if entry == ANY:
            ranks.append(2)
        elif "/" in entry:
            net = ipaddress.ip_network(entry)
            if net.version == remote.version and remote in net:
                ranks.append(1)
        elif ipaddress.ip_address(entry) == remote:
            ranks.append(0)
    return min(ranks) if ranks else None


def _plain_psk(cfg: Config, local_id: str | None, remote_text: str) -> bytes | None:
    """The definition: a secret naming the peer (its address or ID, or the one static
    remote ID its address selects) scores 4, one for %any 2, +1 if it lists our ID;
    the first of the best in file order."""
    try:
        remote: Identity | None = Identity.parse(remote_text)
    except IdentityError:
        remote = None
    wanted = {remote} if remote is not None else set()
    if remote is not None and remote.address is not None:
        static = {c.remote.id for c in cfg.connections.values()
                  if c.remote.id is not None and not c.remote.id.is_any
                  and _plain_rank(c, remote.address) in (0, 1)}
        if len(static) == 1:
            wanted |= static
    local = Identity.parse(local_id) if local_id else None
    best, best_score = None, 0
    for secret in cfg.secrets.values():
        if secret.type is not SecretType.IKE:
            continue
        ids = set(secret.ids)
        score = 4 if wanted & ids else 2 if any(i.is_any for i in ids) else 0
        if score == 0:
            continue
        if local is not None and local in ids:
            score += 1
        if score > best_score:
            best, best_score = secret, score
    return best.value if best is not None else None


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


connection = st.fixed_dictionaries({
    # "%any" stands alone (the loader refuses it beside addresses).
    "remote_addrs": st.one_of(
        st.just(["%any"]),
        st.lists(st.sampled_from(REMOTES), min_size=1, max_size=3, unique=True)),
    "local_addrs": st.lists(st.sampled_from(LOCALS), max_size=2, unique=True),
    "remote_id": st.sampled_from([None, *IDS]),
})
secret = st.fixed_dictionaries({
    "ids": st.lists(st.sampled_from(IDS), min_size=1, max_size=3, unique=True),
    "type": st.sampled_from(["ike", "ike", "xauth"]),
})


def _config(conns: list[dict[str, object]], secrets: list[dict[str, object]]) -> Config:
    text = ""
    for i, c in enumerate(conns):
        text += f"[connections.c{i}]\nremote_addrs = {_toml_list(c['remote_addrs'])}\n"  # type: ignore[arg-type]
        if c["local_addrs"]:
            text += f"local_addrs = {_toml_list(c['local_addrs'])}\n"  # type: ignore[arg-type]
        if c["remote_id"] is not None:
            text += f'[connections.c{i}.remote]\nid = "{c["remote_id"]}"\n'
    for i, s in enumerate(secrets):
        text += (f'[secrets.s{i}]\nsecret = "secret number {i}, long enough"\n'
                 f'ids = {_toml_list(s["ids"])}\ntype = "{s["type"]}"\n')  # type: ignore[arg-type]
    return parse_config(text, "generated.toml")


@settings(max_examples=300, deadline=None)
@given(
    conns=st.lists(connection, min_size=1, max_size=6),
    secrets=st.lists(secret, max_size=5),
    local=st.sampled_from(["192.0.2.1", "192.0.2.5", "2001:db8::1"]),
    remote=st.sampled_from([*ADDRESSES, "192.0.2.77", "gw.example.org", "branch.example.ORG"]),
    local_id=st.sampled_from([None, "gw.example.org", "192.0.2.1"]),
)
# A secret for %any first in the file, the peer's own after it: the peer's wins.
@example(conns=[{"remote_addrs": ["192.0.2.2"], "local_addrs": [], "remote_id": None}],
         secrets=[{"ids": ["%any"], "type": "ike"}, {"ids": ["192.0.2.2"], "type": "ike"}],
         local="192.0.2.1", remote="192.0.2.2", local_id=None)
def test_lookups_match_their_definition(
    conns: list[dict[str, object]], secrets: list[dict[str, object]], local: str, remote: str,
    local_id: str | None,
) -> None:
    cfg = _config(conns, secrets)
    assert cfg.psk_for(local_id, remote) == _plain_psk(cfg, local_id, remote)
    if remote[0].isdigit():
        plain = _plain_candidates(cfg, local, remote)
        assert [c.name for c in cfg.connections_for_addresses(local, remote)] == plain
        # A Main Mode request: those naming that very address if any do, else all.
        exact = [n for n in plain if remote in cfg.connections[n].remote_addrs]
        assert [c.name for c in cfg.responder_candidates(local, remote)] == (exact or plain)


class _CountingDict(dict[str, ConnectionConfig]):
    visits = 0

    def values(self) -> dict_values[str, ConnectionConfig]:
        type(self).visits += 1
        return super().values()


def _hub(peers: int) -> Config:
    text = "".join(
        f'[connections.p{i}]\nlocal_addrs = ["10.0.0.1"]\n'
        f'remote_addrs = ["10.{i // 250}.{i % 250}.1"]\n'
        f'[secrets.p{i}]\nsecret = "secret of peer {i}, long enough"\n'
        f'ids = ["10.{i // 250}.{i % 250}.1"]\n'
        for i in range(peers))
    return parse_config(text, "hub.toml")


def test_a_hub_of_thousands_of_peers_does_not_visit_every_connection_per_lookup() -> None:
    # With 2,000 static peers every new handshake looks up its connections and its
    # pre-shared key by address: the configuration is indexed once, not scanned per
    # handshake (which made each handshake cost O(peers), 70 ms with 4,000 of them).
    cfg = _hub(2000)
    counted = dataclasses.replace(cfg, connections=_CountingDict(cfg.connections))
    assert [c.name for c in counted.connections_for_addresses("10.0.0.1", "10.0.7.1")] == ["p7"]
    assert counted.psk_for(None, "10.0.7.1") == b"secret of peer 7, long enough"
    first = _CountingDict.visits  # building the index visits them once
    for i in range(0, 2000, 97):
        address = f"10.{i // 250}.{i % 250}.1"
        assert [c.name for c in counted.connections_for_addresses("10.0.0.1", address)] == [
            f"p{i}"]
        assert counted.psk_for(None, address) == f"secret of peer {i}, long enough".encode()
    assert _CountingDict.visits == first
    assert counted.psk_for(None, "10.99.0.1") is None
