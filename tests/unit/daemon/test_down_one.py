"""``ikev1d down NAME --peer ID`` / ``--ike-id N``: one road warrior of a connection
goes, the others stay; clear errors when nothing matches."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json

import pytest

from ikev1d.cli import main
from ikev1d.daemon.control import ControlProtocolError, DownRequest, decode_request, encode_request
from ikev1d.engine.api import ChildSaDeleted, IkeSaDeleted
from ikev1d.status import ChildSaStatus, IkeSaStatus, StatusDocument
from tests.unit.daemon._fakes import FakeEngine, running_daemon

PEERS = {3: ("alice@example.org", "198.51.100.7"), 4: ("bob@example.org", "198.51.100.7"),
         5: ("carol@example.org", "203.0.113.9")}


class RoadWarriorEngine(FakeEngine):
    """Three road warriors of connection site-ok (two behind one NAT address)."""

    alive: dict[int, tuple[str, str]]

    def status(self, now: float, conn: str | None = None) -> StatusDocument:
        self.status_asked.append(conn)
        return StatusDocument(tuple(
            IkeSaStatus(
                name="site-ok", state="ESTABLISHED", local=("127.0.0.1", 4500),
                remote=(address, 4500), local_id="127.0.0.1", remote_id=peer_id,
                initiator=False, cookies=(bytes(8), bytes(8)), proposal="aes128-sha256-modp2048",
                auth="psk", nat_local=False, nat_remote=True, established_s=1,
                rekey_in_s=100, virtual_ip=None, ike_id=ike_id,
                children=(ChildSaStatus(
                    name="net", state="INSTALLED", mode="tunnel", encap=True,
                    spi_in=0xC0000000 + ike_id, spi_out=0xD0000000 + ike_id,
                    proposal="aes128gcm16",
                    local_ts=(ipaddress.ip_network("10.2.0.0/16"),),
                    remote_ts=(ipaddress.ip_network(f"10.3.0.{ike_id}/32"),),
                    rekey_in_s=50, expires_in_s=60),),
            )
            for ike_id, (peer_id, address) in sorted(self.alive.items())
        ))

    def peer_ike_ids(self, conn: str, peer: str) -> list[int]:
        return [i for i, (peer_id, address) in sorted(self.alive.items())
                if peer in (peer_id, address)]

    def terminate_ike(self, ike_id: int, now: float) -> bool:
        self.calls.append(f"terminate_ike {ike_id}")
        if self.alive.pop(ike_id, None) is None:
            return False
        self.emit(ChildSaDeleted("site-ok", "net", ike_id, ike_id, 0xC0000000 + ike_id,
                                 0xD0000000 + ike_id, "deleted by local request"))
        self.emit(IkeSaDeleted("site-ok", ike_id, "deleted by local request"))
        return True


def test_request_codec() -> None:
    for request in (DownRequest("rw", "alice"), DownRequest("rw", None, 7)):
        assert decode_request(encode_request(request)) == request
    assert json.loads(encode_request(DownRequest("rw"))) == {"command": "down", "name": "rw"}
    for line, reason in ((b'{"command":"down","name":"rw","peer":""}', "'peer'"),
                         (b'{"command":"down","name":"rw","ike_id":-1}', "'ike_id'"),
                         (b'{"command":"down","name":"rw","ike_id":true}', "'ike_id'"),
                         (b'{"command":"down","name":"rw","peer":"a","ike_id":1}', "exclude")):
        with pytest.raises(ControlProtocolError, match=reason):
            decode_request(line)


def test_down_one_road_warrior_by_peer_id_or_ike_id(capsys: pytest.CaptureFixture[str]) -> None:
    async def cli(*argv: str) -> int:
        return await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(main, list(argv)))

    async def body() -> None:
        async with running_daemon() as h:
            engine = h.engine
            engine.__class__ = RoadWarriorEngine
            assert isinstance(engine, RoadWarriorEngine)
            engine.alive = dict(PEERS)
            sock = ("--socket", h.socket_path)

            assert await cli("status", *sock) == 0
            assert "ike-id 4" in capsys.readouterr().out

            assert await cli("down", "site-ok", "--peer", "bob@example.org", *sock) == 0
            out = capsys.readouterr().out
            assert "deleted 1 ISAKMP SA(s) (#4 bob@example.org) and 1 IPsec SA(s)" in out
            assert sorted(engine.alive) == [3, 5]
            assert [r.spi_in for r in h.backend.removed] == [0xC0000004]  # only bob's

            assert await cli("down", "site-ok", "--ike-id", "5", *sock) == 0
            assert "#5 carol@example.org" in capsys.readouterr().out
            assert sorted(engine.alive) == [3]

            # Nothing matches: an error naming what there is, and nothing deleted.
            assert await cli("down", "site-ok", "--ike-id", "4", *sock) == 1
            err = capsys.readouterr().err
            assert "no ISAKMP SA #4" in err and "#3 alice@example.org" in err
            assert await cli("down", "site-ok", "--peer", "mallory", *sock) == 1
            assert "no ISAKMP SA with peer 'mallory'" in capsys.readouterr().err
            assert await cli("down", "nope", "--peer", "alice@example.org", *sock) == 1
            assert "no connection named 'nope'" in capsys.readouterr().err
            assert sorted(engine.alive) == [3]
            assert [c for c in engine.calls if c.startswith("terminate")] == [
                "terminate_ike 4", "terminate_ike 5"]

            # By the peer's address: the last one.
            assert await cli("down", "site-ok", "--peer", "198.51.100.7", *sock) == 0
            assert engine.alive == {}
            # Only `status` asked for every connection's SAs; each `down` for its own.
            assert engine.status_asked[0] is None
            assert set(engine.status_asked[1:]) == {"site-ok"}

    asyncio.run(body())


def test_peer_and_ike_id_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["down", "rw", "--peer", "a", "--ike-id", "1"])
    assert "not allowed with" in capsys.readouterr().err
