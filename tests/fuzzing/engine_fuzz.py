"""A structure-aware fuzzer for the protocol engine.

Codec fuzzing (tests/unit/wire/test_fuzz.py) stops where the handlers start.
This one takes real exchanges, two ikev1d engines talking in memory (Main
Mode, Quick Mode and Informational, each side initiating), replays one of
them up to a chosen message, and feeds the engine that is about to receive
that message a batch of mutations of it: header fields, payload order and
presence, payload bodies, and decoded structures (SA proposals and their
attributes, IDs, notifications, deletes). The fuzzer holds the keys, so most
mutations of encrypted messages are encrypted under the right key and IV
with a recomputed HASH (or proof of identity): the mutated plaintext reaches
the handlers instead of dying at the HASH check. Payload chains from the
strongSwan vectors (tests/vectors/strongswan/, which include the keys to
decrypt them) are spliced in as well, so that strongSwan-shaped content is
mutated too.

After each batch both engines are shut down and their timers run out; then
nothing may be left: no SA, half-open entry, timer or SPI, no internal
error (an exception that is not a protocol failure), a bounded number of log
lines, and (when asked) bounded memory growth under ``tracemalloc``.

``run(cases, seed)`` returns the figures; scripts/fuzz_engine.py runs it from
the command line (``make fuzz``), tests/unit/engine/test_engine_fuzz.py runs
a slice of it.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import random
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field

from ikev1d.config import parse_config
from ikev1d.crypto import informational_hash, phase2_iv, qm_hash1, qm_hash2, qm_hash3
from ikev1d.engine import Engine
from ikev1d.engine.api import Datagram
from ikev1d.engine.exchanges.main_mode import MainMode
from ikev1d.engine.exchanges.quick_mode import QuickMode
from ikev1d.engine.ike_sa import IkeSa
from ikev1d.wire import (
    Attribute,
    AttributePayload,
    DeletePayload,
    ExchangeType,
    Flags,
    Header,
    IdPayload,
    ModeCfgAttr,
    NotifyPayload,
    NotifyType,
    PayloadType,
    SaPayload,
    Transform,
    WireError,
    decode_payloads_with_spans,
    encode_header,
    split_message,
)

A_ADDR = "192.0.2.1"
B_ADDR = "192.0.2.2"
MM = ExchangeType.IDENTITY_PROTECTION
QM = ExchangeType.QUICK_MODE
INFO = ExchangeType.INFORMATIONAL
TX = ExchangeType.TRANSACTION


def config_text(local: str, remote: str, local_ts: str, remote_ts: str, *,
                esp: str = '["aes128gcm16", "aes128-sha256"]', encap: bool = False,
                proposals: str = '["aes128-sha256-modp2048"]', role: str = "") -> str:
    """``role``: "" for a site-to-site pair, "client" or "server" for a road warrior
    with XAUTH and Mode Config (pull), the client's tunnel end its virtual IP."""
    if role == "client":
        local_ts = ""
    elif role == "server":
        remote_ts = ""
    road = {
        "": "",
        "client": 'vips = ["0.0.0.0"]\n[connections.gw.local_xauth]\nauth = "xauth"\n'
                  'xauth_id = "alice"\n',
        "server": 'pools = ["p"]\n[connections.gw.remote_xauth]\nauth = "xauth"\n',
    }[role]
    tail = ("" if not role else
            '[pools.p]\naddrs = "10.3.0.0/24"\ndns = ["10.2.0.53"]\n'
            'split_include = ["10.2.0.0/24"]\n'
            '[secrets.alice]\ntype = "xauth"\nids = ["alice"]\nsecret = "her password"\n')
    return f"""
[daemon]
dataplane = "none"
retransmit_timeout = "1s"
retransmit_tries = 3

[connections.gw]
local_addrs = ["{local}"]
remote_addrs = ["{remote}"]
proposals = {proposals}
encap = {"true" if encap else "false"}
dpd_delay = "30s"
{road}
[connections.gw.local]
auth = "psk"
id = "{local}"

[connections.gw.remote]
auth = "psk"
id = "{remote}"

[connections.gw.children.net]
local_ts = [{f'"{local_ts}"' if local_ts else ""}]
remote_ts = [{f'"{remote_ts}"' if remote_ts else ""}]
esp_proposals = {esp}

[secrets.gw]
secret = "a very long shared secret for tests"
ids = ["{remote}"]
{tail}"""


# --- real exchanges, recorded and replayed -------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    initiator: str
    """Which side ("a" or "b") starts Main Mode."""
    esp: str = '["aes128gcm16", "aes128-sha256"]'
    encap: bool = False
    proposals: str = '["aes128-sha256-modp2048"]'
    roadwarrior: bool = False
    """A is an XAUTH and Mode Config client of B: Transaction exchanges too."""


SCENARIOS = (
    Scenario("a-initiates", "a"),
    Scenario("b-initiates", "b"),
    Scenario("pfs-nat-t", "a", esp='["aes128-sha256-modp2048"]', encap=True),
    Scenario("3des-sha1", "b", proposals='["3des-sha1-modp1024"]', esp='["3des-sha1"]'),
    Scenario("road-warrior", "a", roadwarrior=True),
)


class Pair:
    """Two engines in memory, deterministic (seeded randomness, a fake clock)."""

    def __init__(self, scenario: Scenario) -> None:
        self.now = 1000.0
        kw = {"esp": scenario.esp, "encap": scenario.encap, "proposals": scenario.proposals}
        roles = ("client", "server") if scenario.roadwarrior else ("", "")
        self.engines = {
            "a": Engine(parse_config(config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24",
                                                 role=roles[0],
                                                 **kw)),  # type: ignore[arg-type]
                        random_bytes=random.Random(1).randbytes),
            "b": Engine(parse_config(config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24",
                                                 role=roles[1],
                                                 **kw)),  # type: ignore[arg-type]
                        random_bytes=random.Random(2).randbytes),
        }
        self.sent: list[tuple[str, Datagram]] = []
        self.hold_at: int | None = None
        self.held: tuple[str, Datagram] | None = None

    @staticmethod
    def other(name: str) -> str:
        return "b" if name == "a" else "a"

    def pump(self, rounds: int = 60) -> None:
        for _ in range(rounds):
            moved = False
            for name, engine in self.engines.items():
                for dgram in engine.datagrams_to_send():
                    moved = True
                    index = len(self.sent)
                    self.sent.append((name, dgram))
                    if self.hold_at is not None and index >= self.hold_at:
                        if index == self.hold_at:
                            self.held = (name, dgram)
                        continue
                    self.deliver(name, dgram)
                engine.events()
            if not moved:
                return

    def deliver(self, sender: str, dgram: Datagram) -> None:
        receiver = self.engines[self.other(sender)]
        receiver.receive_datagram(dgram.data, dgram.remote, dgram.local, self.now)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            deadlines = [d for d in (e.get_timer() for e in self.engines.values())
                         if d is not None and d <= end]
            if not deadlines:
                break
            self.now = max(self.now, min(deadlines))
            for engine in self.engines.values():
                engine.handle_timer(self.now)
            self.pump()
        self.now = end

    def script(self, initiator: str) -> list[Callable[[], None]]:
        """Main Mode and Quick Mode started by ``initiator``, a Quick Mode started
        by the other side, DPD both ways, then the initiator deletes everything."""
        first, second = self.engines[initiator], self.engines[self.other(initiator)]

        def establish() -> None:
            first.initiate("gw", None, self.now)
            self.pump()

        def reverse_quick_mode() -> None:
            second.initiate("gw", "net", self.now)
            self.pump()

        def dpd() -> None:
            self.advance(31)

        def delete() -> None:
            first.terminate("gw", self.now)
            self.pump()

        return [establish, reverse_quick_mode, dpd, delete]

    def replay_until(self, scenario: Scenario, index: int) -> tuple[str, Datagram] | None:
        """Run the script, holding back message ``index`` (and dropping all after it)."""
        self.hold_at = index
        for step in self.script(scenario.initiator):
            step()
            if self.held is not None:
                return self.held
        return None


def record(scenario: Scenario) -> list[tuple[str, Datagram]]:
    pair = Pair(scenario)
    for step in pair.script(scenario.initiator):
        step()
    return pair.sent


# --- strongSwan's payload chains ------------------------------------------------------


def strongswan_chains() -> dict[tuple[int, int], list[list[tuple[int, bytes]]]]:
    """Payload chains of strongSwan's messages, by (exchange type, index within its
    exchange), decrypted with the keys the vectors hold; empty without vectors."""
    try:
        from tests.unit.crypto.test_kat_strongswan import PRESENT, decrypt_all, load, our_phase1
    except Exception:  # pragma: no cover - the vectors module is optional here
        return {}
    out: dict[tuple[int, int], list[list[tuple[int, bytes]]]] = {}
    for name in PRESENT:
        ex = load(name)
        for number, message in enumerate(ex.main_mode[:4]):
            header, body = split_message(message.data)
            chain = raw_chain(header.next_payload, body)
            if chain is not None:
                out.setdefault((MM, number), []).append(chain)
        _keys, cipher = our_phase1(ex)
        seen: dict[int, int] = {}
        for decrypted in decrypt_all(ex, cipher):
            header, _ = split_message(decrypted.message.data)
            chain = raw_chain(header.next_payload, decrypted.plain)
            if chain is None:
                continue
            number = seen.get(header.message_id, 0)
            seen[header.message_id] = number + 1
            if header.exchange_type == MM:
                number += 4
            out.setdefault((header.exchange_type, number), []).append(chain)
    return out


# --- payload chains as (type, body) pairs ------------------------------------------------

Chain = list[tuple[int, bytes]]


def raw_chain(first: int, data: bytes) -> Chain | None:
    """The payloads as (type, body), or None if the chain does not decode."""
    try:
        spans = decode_payloads_with_spans(first, data, allow_trailing=True)
    except WireError:
        return None
    return [(span.payload_type, span.body(data)) for span in spans]


def encode_chain(chain: Chain) -> bytes:
    """Any chain, also one no encoder of ours would write (RFC 2408 section 3.2)."""
    out = b""
    for i, (_ptype, body) in enumerate(chain):
        following = chain[i + 1][0] if i + 1 < len(chain) else 0
        length = min(len(body) + 4, 0xFFFF)
        out += bytes([following & 0xFF, 0]) + length.to_bytes(2, "big") + body[: length - 4]
    return out


# --- mutations ---------------------------------------------------------------------------

INTERESTING_INTS = (0, 1, 2, 3, 4, 5, 7, 14, 19, 20, 128, 255, 256, 0x7FFF, 0x8000, 0xFFFF)
NOTIFY_TYPES = (
    NotifyType.INVALID_PAYLOAD_TYPE, NotifyType.NO_PROPOSAL_CHOSEN,
    NotifyType.INVALID_ID_INFORMATION, NotifyType.AUTHENTICATION_FAILED,
    NotifyType.INVALID_HASH_INFORMATION, NotifyType.CONNECTED, NotifyType.RESPONDER_LIFETIME,
    NotifyType.INITIAL_CONTACT, NotifyType.R_U_THERE, NotifyType.R_U_THERE_ACK, 0, 8191,
    8192, 0xFFFF,
)


def rand_bytes(rng: random.Random, longest: int = 64) -> bytes:
    pick = rng.random()
    if pick < 0.1:
        return b""
    if pick < 0.15:
        return rng.randbytes(rng.choice((255, 256, 1024, 3000)))
    return rng.randbytes(rng.randint(1, longest))


def rand_int(rng: random.Random, bits: int) -> int:
    if rng.random() < 0.5:
        return rng.choice(INTERESTING_INTS) & ((1 << bits) - 1)
    return rng.getrandbits(bits)


def mutate_attribute(rng: random.Random, attribute: Attribute) -> Attribute:
    pick = rng.random()
    if pick < 0.25:
        return Attribute(attribute.type, rand_int(rng, 16))
    if pick < 0.45:
        return Attribute(attribute.type, rand_bytes(rng, 12))
    if pick < 0.75:
        # RFC 2408 section 3.3 allows TLV values up to 64 KB: past float() at 129
        # bytes, past str() at about 1,800.
        return Attribute(attribute.type, b"\xff" * rng.choice((5, 9, 130, 3000)))
    return Attribute(rand_int(rng, 15), attribute.value)


def mutate_transform(rng: random.Random, transform: Transform) -> Transform:
    attrs = list(transform.attributes)
    pick = rng.random()
    if attrs and pick < 0.6:
        i = rng.randrange(len(attrs))
        attrs[i] = mutate_attribute(rng, attrs[i])
    elif attrs and pick < 0.7:
        del attrs[rng.randrange(len(attrs))]
    elif attrs and pick < 0.8:
        attrs.insert(rng.randrange(len(attrs) + 1), rng.choice(attrs))
    elif pick < 0.9:
        return dataclasses.replace(transform, transform_id=rand_int(rng, 8))
    else:
        return dataclasses.replace(transform, number=rand_int(rng, 8))
    return dataclasses.replace(transform, attributes=tuple(attrs))


def mutate_sa(rng: random.Random, sa: SaPayload) -> SaPayload:
    proposals = list(sa.proposals)
    if not proposals:
        return sa
    i = rng.randrange(len(proposals))
    proposal = proposals[i]
    pick = rng.random()
    transforms = list(proposal.transforms)
    if transforms and pick < 0.6:
        j = rng.randrange(len(transforms))
        transforms[j] = mutate_transform(rng, transforms[j])
        proposals[i] = dataclasses.replace(proposal, transforms=tuple(transforms))
    elif transforms and pick < 0.7:
        many = tuple(transforms * rng.randint(2, 40))
        proposals[i] = dataclasses.replace(proposal, transforms=many)
    elif pick < 0.8:
        proposals[i] = dataclasses.replace(proposal, spi=rand_bytes(rng, 16))
    elif pick < 0.9:
        proposals[i] = dataclasses.replace(proposal, protocol_id=rand_int(rng, 8))
    else:
        proposals.append(dataclasses.replace(proposal, number=rand_int(rng, 8)))
    return SaPayload(tuple(proposals))


def mutate_structure(rng: random.Random, ptype: int, body: bytes,
                     spis: list[bytes]) -> bytes | None:
    """A decoded payload changed and encoded again; None if it does not decode
    (or the change cannot be encoded)."""
    try:
        if ptype == PayloadType.SA:
            return mutate_sa(rng, SaPayload.decode_body(body)).encode_body()
        if ptype == PayloadType.ID:
            p = IdPayload.decode_body(body)
            pick = rng.random()
            if pick < 0.3:
                p = dataclasses.replace(p, id_type=rand_int(rng, 8))
            elif pick < 0.6:
                p = dataclasses.replace(p, protocol=rand_int(rng, 8), port=rand_int(rng, 16))
            else:
                p = dataclasses.replace(p, data=rand_bytes(rng, 40))
            return p.encode_body()
        if ptype == PayloadType.NOTIFICATION:
            n = NotifyPayload.decode_body(body)
            n = dataclasses.replace(
                n, notify_type=rng.choice(NOTIFY_TYPES),
                spi=rng.choice([*spis, rand_bytes(rng, 16), n.spi]) if rng.random() < 0.5
                else n.spi,
                data=rand_bytes(rng, 24) if rng.random() < 0.5 else n.data,
                protocol_id=rand_int(rng, 8) if rng.random() < 0.3 else n.protocol_id)
            return n.encode_body()
        if ptype == PayloadType.DELETE:
            d = DeletePayload.decode_body(body)
            chosen = tuple(rng.sample(spis, k=min(len(spis), rng.randint(0, 3))))
            d = dataclasses.replace(
                d, protocol_id=rng.choice((1, 2, 3, 4, 0, 255)),
                spis=chosen or (rand_bytes(rng, 16),))
            return d.encode_body()
        if ptype == PayloadType.ATTRIBUTE:
            a = AttributePayload.decode_body(body)
            attributes = list(a.attributes)
            pick = rng.random()
            if pick < 0.3 and attributes:
                attributes[rng.randrange(len(attributes))] = mutate_attribute(
                    rng, rng.choice(attributes))
            elif pick < 0.6:
                # Mode Config and XAUTH types with values of any length and form.
                kind = rng.choice([*map(int, ModeCfgAttr), rand_int(rng, 15)])
                attributes.append(Attribute(kind, rng.choice(
                    (rand_bytes(rng, 20), rand_int(rng, 16), b"", bytes(4), bytes(17)))))
            elif pick < 0.8:
                a = dataclasses.replace(a, cfg_type=rng.choice((0, 1, 2, 3, 4, 5, 255)))
            else:
                a = dataclasses.replace(a, identifier=rand_int(rng, 16))
            return dataclasses.replace(a, attributes=tuple(attributes)).encode_body()
    except (WireError, ValueError, OverflowError):
        return None
    return None


def mutate_chain(rng: random.Random, chain: Chain, spis: list[bytes],
                 donors: list[Chain]) -> Chain:
    chain = list(chain)
    for _ in range(rng.randint(1, 3)):
        pick = rng.random()
        if chain and pick < 0.4:
            # Mostly the payloads the handlers interpret most: SA, ID, Notify, Delete.
            rich = [i for i, (t, _b) in enumerate(chain) if t in (1, 5, 11, 12, 14)]
            i = rng.choice(rich) if rich and rng.random() < 0.7 else rng.randrange(len(chain))
            ptype, body = chain[i]
            new = mutate_structure(rng, ptype, body, spis)
            if new is None:
                data = bytearray(body)
                for _ in range(rng.randint(1, 4)):
                    if data:
                        data[rng.randrange(len(data))] = rng.randrange(256)
                new = bytes(data)
            chain[i] = (ptype, new)
        elif chain and pick < 0.5:
            i = rng.randrange(len(chain))
            ptype, body = chain[i]
            cut = rng.randrange(len(body) + 1)
            chain[i] = (ptype, body[:cut] if rng.random() < 0.5 else body + rand_bytes(rng))
        elif chain and pick < 0.6:
            del chain[rng.randrange(len(chain))]
        elif chain and pick < 0.7:
            chain.insert(rng.randrange(len(chain) + 1), rng.choice(chain))
        elif len(chain) > 1 and pick < 0.75:
            i, j = rng.sample(range(len(chain)), 2)
            chain[i], chain[j] = chain[j], chain[i]
        elif pick < 0.85:
            ptype = rng.choice([*map(int, PayloadType), rand_int(rng, 8)])
            chain.insert(rng.randrange(len(chain) + 1), (ptype, rand_bytes(rng)))
        elif donors:
            donor = rng.choice(donors)
            if donor:
                chain.insert(rng.randrange(len(chain) + 1), rng.choice(donor))
        else:
            chain.insert(rng.randrange(len(chain) + 1),
                         (PayloadType.VENDOR_ID, rand_bytes(rng, 32)))
    return chain


def mutate_header(rng: random.Random, header: Header) -> Header:
    pick = rng.random()
    if pick < 0.3:
        return dataclasses.replace(header, flags=header.flags ^ rng.choice((1, 2, 4, 0xF8)))
    if pick < 0.5:
        return dataclasses.replace(header, exchange_type=rng.choice(
            (MM, QM, INFO, ExchangeType.AGGRESSIVE, 6, 0, 255)))
    if pick < 0.7:
        return dataclasses.replace(header, message_id=rand_int(rng, 32))
    if pick < 0.85:
        return dataclasses.replace(header, responder_cookie=rng.choice(
            (bytes(8), rng.randbytes(8), header.responder_cookie)))
    return dataclasses.replace(header, initiator_cookie=rng.randbytes(8))


def byte_mutation(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    pick = rng.random()
    if pick < 0.5:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif pick < 0.75:
        del out[rng.randrange(len(out)) :]
    else:
        out += rand_bytes(rng, 200)
    return bytes(out)


# --- the receiver's keys: encrypt a mutated chain as the peer would -----------------------


def receiver_sa(engine: Engine, header: Header) -> IkeSa | None:
    sa = engine._sas.get(header.initiator_cookie + header.responder_cookie)
    if sa is None:
        sa = engine._initiating.get(header.initiator_cookie)
    return sa


def seal(rng: random.Random, sa: IkeSa, header: Header, chain: Chain,
         original_first: int) -> bytes | None:
    """Encrypt ``chain`` for ``sa`` with the IV it expects, after recomputing the
    HASH (or Main Mode proof) in front unless we choose to leave it wrong."""
    if sa.cipher is None or sa.keys is None:
        return None
    mid = header.message_id
    prf, skeyid_a = sa.hash_alg, sa.keys.skeyid_a
    if rng.random() < 0.85 and chain and chain[0][0] == PayloadType.HASH:
        rest = encode_chain(chain[1:])
        expected: bytes | None = None
        exchange = sa.exchanges.get(mid)
        if header.exchange_type in (INFO, TX):
            # draft-dukes-ike-mode-cfg-02 section 3.2: the Transaction's HASH is
            # built like the Informational's.
            expected = informational_hash(prf, skeyid_a, mid, rest)
        elif header.exchange_type == QM and exchange is None:
            expected = qm_hash1(prf, skeyid_a, mid, rest)
        elif isinstance(exchange, QuickMode) and exchange.initiator:
            expected = qm_hash2(prf, skeyid_a, mid, exchange.ni, rest)
        elif isinstance(exchange, QuickMode):
            expected = qm_hash3(prf, skeyid_a, mid, exchange.ni, exchange.nr)
        elif isinstance(exchange, MainMode) and exchange.auth is not None:
            ids = [body for ptype, body in chain if ptype == PayloadType.ID]
            if ids:
                try:
                    expected = exchange.auth.proof_hash(not sa.initiator, ids[0])
                except Exception:
                    expected = None
        if expected is not None:
            chain = [(PayloadType.HASH, expected), *chain[1:]]
    if mid == 0:
        iv = sa.phase1_iv
    elif mid in sa.exchange_ivs:
        iv = sa.exchange_ivs[mid]
    else:
        iv = phase2_iv(sa.hash_alg, sa.phase1_iv, mid, sa.cipher.block_size)
    plain = encode_chain(chain)
    block = sa.cipher.block_size
    plain += bytes(-len(plain) % block or 0)
    if not plain:
        plain = bytes(block)
    body = sa.cipher.encrypt(iv, plain)
    first = chain[0][0] if chain else original_first
    out = dataclasses.replace(header, next_payload=first & 0xFF,
                              flags=header.flags | Flags.ENCRYPTION)
    return encode_header(out, len(body)) + body


@dataclass
class Counter(logging.Handler):
    lines: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        logging.Handler.__init__(self, logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += 1
        message = record.getMessage()
        if "internal error" in message or record.exc_info:
            if len(self.errors) < 20:
                self.errors.append(message[:300])

    def __hash__(self) -> int:
        return id(self)


class Fuzzer:
    def __init__(self, seed: int, *, batch: int = 100, memory: bool = False) -> None:
        self.rng = random.Random(seed)
        self.batch = batch
        self.memory = memory
        self.traces = {s.name: record(s) for s in SCENARIOS}
        self.strongswan = strongswan_chains()
        self.cases = 0
        self.batches = 0
        self.max_lines = 0
        self.max_growth = 0
        self.baseline: int | None = None
        self.counter = Counter()
        self.targets: dict[str, int] = {}
        self.failures: list[str] = []

    def target_label(self, scenario: Scenario, sender: str, header: Header, index: int) -> str:
        trace = self.traces[scenario.name]
        number = sum(1 for s, d in trace[:index]
                     if split_message(d.data)[0].message_id == header.message_id
                     and split_message(d.data)[0].exchange_type == header.exchange_type) + 1
        kind = {int(MM): "MM", int(QM): "QM", int(INFO): "INFO",
                int(TX): "TX"}.get(header.exchange_type, "?")
        receiver = "b" if sender == "a" else "a"
        return f"{kind}{number}->{receiver}"

    def run_batch(self, cases: int) -> None:
        rng = self.rng
        scenario = rng.choice(SCENARIOS)
        trace = self.traces[scenario.name]
        # Message 1 is what anyone on the Internet can send: it gets more batches.
        index = 0 if rng.random() < 0.15 else rng.randrange(len(trace))
        pair = Pair(scenario)
        held = pair.replay_until(scenario, index)
        if held is None:
            return
        sender, dgram = held
        receiver = pair.engines[pair.other(sender)]
        header, body = split_message(dgram.data)
        label = self.target_label(scenario, sender, header, index)
        self.targets[label] = self.targets.get(label, 0) + cases
        encrypted = bool(header.flags & Flags.ENCRYPTION)
        sa = receiver_sa(receiver, header)
        plain_chain: Chain | None
        if encrypted and sa is not None and sa.cipher is not None:
            mid = header.message_id
            iv = (sa.phase1_iv if mid == 0 else sa.exchange_ivs.get(mid) or phase2_iv(
                sa.hash_alg, sa.phase1_iv, mid, sa.cipher.block_size))
            plain_chain = raw_chain(header.next_payload, sa.cipher.decrypt(iv, body))
        elif not encrypted:
            plain_chain = raw_chain(header.next_payload, body)
        else:
            plain_chain = None
        number = int(label[2:].split("-")[0]) - 1 if label.startswith(("MM", "QM")) else 0
        donors = self.strongswan.get((header.exchange_type, number), [])
        spis = self.spis(pair)
        self.counter.lines = 0
        logger = logging.getLogger("ikev1d")
        logger.addHandler(self.counter)
        level, propagate = logger.level, logger.propagate
        logger.setLevel(logging.INFO)
        # The fuzzer counts the lines; handlers above (pytest's capture keeps every
        # record) would only hold millions of them.
        logger.propagate = False
        try:
            for _ in range(cases):
                data = self.mutant(rng, dgram.data, header, plain_chain, encrypted, receiver,
                                   donors, spis)
                src = dgram.local if rng.random() < 0.9 else (dgram.local[0], 4500)
                receiver.receive_datagram(data, dgram.remote, src, pair.now)
                if rng.random() < 0.01:
                    pair.now += rng.choice((0.5, 5.0, 40.0))
                    pair.advance(0)
                    for engine in pair.engines.values():
                        engine.handle_timer(pair.now)
                self.cases += 1
            # The real message last: whatever the mutants did, the exchange goes on.
            pair.hold_at = None
            pair.deliver(sender, dgram)
            pair.pump()
            for engine in pair.engines.values():
                engine.shutdown(pair.now)
            pair.pump()
            pair.advance(7 * 86400)
        finally:
            logger.removeHandler(self.counter)
            logger.setLevel(level)
            logger.propagate = propagate
        self.batches += 1
        self.max_lines = max(self.max_lines, self.counter.lines)
        for name, engine in pair.engines.items():
            left = leftovers(engine)
            if left:
                self.failures.append(f"{label} ({scenario.name}): {name} keeps {left}")
        if self.counter.errors:
            self.failures.append(f"{label} ({scenario.name}): {self.counter.errors[0]}")
            self.counter.errors.clear()
        if self.memory:
            # What survives a batch once its engines are gone: after the first
            # batch (caches of the interpreter, the logging module) it must not grow.
            del pair, receiver, sa
            gc.collect()
            traced = tracemalloc.get_traced_memory()[0]
            if self.baseline is None:
                self.baseline = traced
            self.max_growth = max(self.max_growth, traced - self.baseline)

    def spis(self, pair: Pair) -> list[bytes]:
        out: list[bytes] = []
        for engine in pair.engines.values():
            for sa in engine.all_sas():
                out.append(sa.cky_i + sa.cky_r)
                for child in sa.children:
                    out += [child.spi_in, child.spi_out]
        return out

    def mutant(self, rng: random.Random, data: bytes, header: Header, chain: Chain | None,
               encrypted: bool, receiver: Engine, donors: list[Chain],
               spis: list[bytes]) -> bytes:
        pick = rng.random()
        if pick < 0.15 or chain is None:
            return byte_mutation(rng, data)
        new_header = mutate_header(rng, header) if pick < 0.3 else header
        if donors and rng.random() < 0.2:
            base = list(rng.choice(donors))
            if chain and chain[0][0] == PayloadType.HASH and (
                not base or base[0][0] != PayloadType.HASH
            ):
                base.insert(0, chain[0])
        else:
            base = chain
        new_chain = mutate_chain(rng, base, spis, donors)
        if encrypted and new_header.message_id and rng.random() < 0.5:
            # A new exchange each time, so that mutants reach the start of one
            # rather than the exchange an earlier mutant began.
            new_header = dataclasses.replace(new_header, message_id=rng.getrandbits(32) or 1)
        if encrypted:
            sa = receiver_sa(receiver, new_header) or receiver_sa(receiver, header)
            if sa is not None:
                sealed = seal(rng, sa, new_header, new_chain, header.next_payload)
                if sealed is not None:
                    return sealed
        body = encode_chain(new_chain)
        first = new_chain[0][0] if new_chain else 0
        out = dataclasses.replace(new_header, next_payload=first & 0xFF)
        return encode_header(out, len(body)) + body


def leftovers(engine: Engine) -> dict[str, int]:
    """What an engine holds after shutdown and every timer has run: nothing."""
    left = {
        "sas": len(engine._sas),
        "initiating": len(engine._initiating),
        "half_open": len(engine._half_open),
        "timers": sum(1 for _d, _s, t in engine.timers._heap if not t.cancelled),
        "spis": len(engine._spis),
    }
    return {k: v for k, v in left.items() if v}


@dataclass
class Result:
    cases: int
    batches: int
    seconds: float
    max_lines_per_batch: int
    max_growth_bytes: int
    targets: dict[str, int]
    failures: list[str]

    @property
    def rate(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0


def run(cases: int, seed: int = 1, *, batch: int = 100, memory: bool = False,
        progress: Callable[[Fuzzer], None] | None = None) -> Result:
    if memory:
        tracemalloc.start(1)
    try:
        fuzzer = Fuzzer(seed, batch=batch, memory=memory)
        start = time.perf_counter()
        while fuzzer.cases < cases:
            fuzzer.run_batch(min(batch, cases - fuzzer.cases))
            if progress is not None:
                progress(fuzzer)
        seconds = time.perf_counter() - start
    finally:
        if memory:
            tracemalloc.stop()
    return Result(fuzzer.cases, fuzzer.batches, seconds, fuzzer.max_lines,
                  fuzzer.max_growth, dict(sorted(fuzzer.targets.items())), fuzzer.failures)
