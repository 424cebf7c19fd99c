"""Mutation fuzzing of the decoder: whatever the bytes, only WireError may come out.

A seeded ``random.Random`` (so a failure reproduces) mutates encodings of
realistic messages: bit flips, byte changes, truncation, extension, corrupted
header / payload / nested length fields, splices of two messages, and fully
random bodies behind a valid header. Each input goes through decode_message and
through split_message + decode_payloads (with and without allow_trailing), and
every decoded ID goes through the text / network helpers.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from ikev1d.wire import (
    HEADER_LENGTH,
    IdPayload,
    Payload,
    WireError,
    decode_message,
    decode_payloads,
    id_to_network,
    id_to_text,
    split_message,
)
from ikev1d.wire.describe import describe_message
from tests.unit.wire.test_vectors import ALL as STRONGSWAN_MESSAGES
from tests.wire_helpers import sample_messages

ITERATIONS = 100_000
SEED = 20261127


def _payload_offsets(data: bytes) -> list[int]:
    """Offsets of the generic payload headers of a valid message (walks the chain)."""
    offsets: list[int] = []
    if len(data) <= HEADER_LENGTH:
        return offsets
    off, nxt = HEADER_LENGTH, data[16]
    while nxt and off + 4 <= len(data):
        offsets.append(off)
        nxt = data[off]
        length = int.from_bytes(data[off + 2 : off + 4], "big")
        if length < 4:  # an earlier mutation broke the chain
            break
        off += length
    return offsets


def _mutators(rng: random.Random, corpus: list[bytes]) -> list[Callable[[bytes], bytes]]:
    def bit_flips(d: bytes) -> bytes:
        b = bytearray(d)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)

    def byte_changes(d: bytes) -> bytes:
        b = bytearray(d)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.choice(
                (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, rng.randrange(256))
            )
        return bytes(b)

    def truncate(d: bytes) -> bytes:
        return d[: rng.randrange(len(d))]

    def extend(d: bytes) -> bytes:
        return d + rng.randbytes(rng.randint(1, 16))

    def header_length(d: bytes) -> bytes:
        n = rng.choice((0, 27, 28, len(d) - 1, len(d) + 1, rng.randrange(1 << 32)))
        return d[:24] + (n % (1 << 32)).to_bytes(4, "big") + d[28:]

    def payload_length(d: bytes) -> bytes:
        offs = _payload_offsets(d)
        if not offs:
            return bit_flips(d)
        off = rng.choice(offs)
        n = rng.choice((0, 1, 3, 4, 5, rng.randrange(1 << 16)))
        b = bytearray(d)
        b[off + 2 : off + 4] = n.to_bytes(2, "big")
        return bytes(b)

    def next_payload(d: bytes) -> bytes:
        offs = [16, *_payload_offsets(d)]
        b = bytearray(d)
        b[rng.choice(offs)] = rng.choice((0, 1, 2, 3, 5, 11, 14, 20, 130, 132, rng.randrange(256)))
        return bytes(b)

    def nested_length(d: bytes) -> bytes:
        # hit 16-bit fields deep inside (proposal/transform/attribute lengths, counts)
        b = bytearray(d)
        if len(b) <= HEADER_LENGTH + 2:
            return bit_flips(d)
        i = rng.randrange(HEADER_LENGTH, len(b) - 1)
        b[i : i + 2] = rng.choice((0, 1, 4, 8, 0x8000, 0xFFFF, rng.randrange(1 << 16))).to_bytes(
            2, "big"
        )
        return bytes(b)

    def splice(d: bytes) -> bytes:
        other = rng.choice(corpus)
        cut = rng.randrange(HEADER_LENGTH, len(d) + 1)
        tail = other[rng.randrange(HEADER_LENGTH, len(other) + 1) :]
        spliced = d[:cut] + tail
        return spliced[:24] + len(spliced).to_bytes(4, "big") + spliced[28:]

    def random_body(d: bytes) -> bytes:
        body = rng.randbytes(rng.randint(0, 120))
        return d[:24] + (HEADER_LENGTH + len(body)).to_bytes(4, "big") + body

    def fully_random(d: bytes) -> bytes:
        return rng.randbytes(rng.randint(0, 80))

    return [
        bit_flips,
        byte_changes,
        truncate,
        extend,
        header_length,
        payload_length,
        next_payload,
        nested_length,
        splice,
        random_body,
        fully_random,
    ]


def _use(payloads: tuple[Payload, ...]) -> None:
    for p in payloads:
        if isinstance(p, IdPayload):
            id_to_text(p)
            id_to_network(p)


def test_fuzz_decoder_raises_only_wire_error() -> None:
    rng = random.Random(SEED)
    corpus = [s.message.encode() for s in sample_messages()] + STRONGSWAN_MESSAGES
    mutators = _mutators(rng, corpus)
    stats = {"ok": 0, "wire_error": 0}
    started = time.monotonic()
    for i in range(ITERATIONS):
        base = rng.choice(corpus)
        data = rng.choice(mutators)(base)
        if rng.random() < 0.3:
            # a second mutation; the structural mutators need at least a header
            data = rng.choice(mutators)(data) if len(data) > HEADER_LENGTH else data
        try:
            try:
                _use(decode_message(data).payloads)
                stats["ok"] += 1
            except WireError:
                stats["wire_error"] += 1
            try:
                header, body = split_message(data)
                _use(decode_payloads(header.next_payload, body, allow_trailing=bool(i & 1)))
            except WireError:
                pass
            if i % 4 == 0:  # the demo renderer must not raise either
                describe_message(data)
        except Exception as e:  # pragma: no cover - the failure report
            raise AssertionError(
                f"iteration {i}: {type(e).__name__}: {e}; input {data.hex()}"
            ) from e
    elapsed = time.monotonic() - started
    # The mutations must exercise both outcomes, or the test proves nothing.
    assert stats["ok"] > ITERATIONS // 50, stats
    assert stats["wire_error"] > ITERATIONS // 2, stats
    print(f"fuzz: {ITERATIONS} inputs in {elapsed:.1f}s, {stats}")
