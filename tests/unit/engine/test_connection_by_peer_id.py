"""A responder with several connections for one peer address settles, once Main Mode
message 5 proves the peer's ID, on the first of them whose remote ID is that one
(or accepts any), and refuses an ID none of them names; with a connection per peer
ID (thousands of them) the peer's ID is read once, not once per connection."""

from __future__ import annotations

import pytest

from ikev1d.config import Identity
from ikev1d.engine.api import ChildSaEstablished
from tests.unit.engine.test_engine import A_ADDR, B_ADDR, make_net

PSK = "a very long shared secret for tests"


def _connection(name: str, local: str, remote: str, local_id: str, remote_id: str,
                local_ts: str, remote_ts: str) -> str:
    return f"""
[connections.{name}]
local_addrs = ["{local}"]
remote_addrs = ["{remote}"]
proposals = ["aes128-sha256-ecp256"]
[connections.{name}.local]
auth = "psk"
id = "{local_id}"
[connections.{name}.remote]
auth = "psk"
id = "{remote_id}"
[connections.{name}.children.net]
local_ts = ["{local_ts}"]
remote_ts = ["{remote_ts}"]
esp_proposals = ["aes128gcm16"]
"""


def _responder(ids: list[str], *, any_last: bool = False) -> str:
    text = '[daemon]\ndataplane = "none"\n'
    for i, remote_id in enumerate(ids):
        text += _connection(f"r{i}", B_ADDR, A_ADDR, B_ADDR, remote_id,
                            "10.2.0.0/16", "10.1.0.0/16")
    if any_last:
        text += _connection("anyone", B_ADDR, A_ADDR, B_ADDR, "%any",
                            "10.2.0.0/16", "10.1.0.0/16")
    return text + f'[secrets.a]\nsecret = "{PSK}"\nids = ["{A_ADDR}"]\n'


def _initiator(our_id: str) -> str:
    return ('[daemon]\ndataplane = "none"\nretransmit_timeout = "1s"\nretransmit_tries = 2\n'
            + _connection("gw", A_ADDR, B_ADDR, our_id, B_ADDR, "10.1.0.0/16", "10.2.0.0/16")
            + f'[secrets.b]\nsecret = "{PSK}"\nids = ["{B_ADDR}"]\n')


def _settled_on(ids: list[str], our_id: str, *, any_last: bool = False) -> list[str]:
    net = make_net(_initiator(our_id), _responder(ids, any_last=any_last))
    net.a.engine.initiate("gw", None, net.now)
    net.pump()
    return [s.name for s in net.b.engine.status(net.now).ike_sas]


def test_the_connection_naming_the_proven_id_is_chosen() -> None:
    ids = ["alice.example.org", "bob.example.org", "carol.example.org"]
    assert _settled_on(ids, "bob.example.org") == ["r1"]
    assert _settled_on(ids, "Carol.Example.ORG") == ["r2"]  # FQDNs ignore case
    # Named by none: the %any connection after them, else refused.
    assert _settled_on(ids, "mallory.example.org", any_last=True) == ["anyone"]
    assert _settled_on(ids, "mallory.example.org") == []


def test_a_connection_per_peer_id_reads_the_id_once(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [f"peer{i}.example.org" for i in range(200)]
    net = make_net(_initiator("peer150.example.org"), _responder(ids))
    calls = 0
    original = Identity.from_id_payload.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Identity], payload: object) -> Identity:
        nonlocal calls
        calls += 1
        return original(cls, payload)  # type: ignore[no-any-return]

    monkeypatch.setattr(Identity, "from_id_payload", classmethod(counted))
    net.a.engine.initiate("gw", None, net.now)
    net.pump()
    assert [s.name for s in net.b.engine.status(net.now).ike_sas] == ["r150"]
    assert any(isinstance(e, ChildSaEstablished) for e in net.b.events)
    # Each engine reads the other's ID a few times (logs, status); never per candidate.
    assert calls < 20
