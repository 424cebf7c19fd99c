"""decode(encode(x)) == x for every payload type and whole messages, and truncation:
every strict prefix of a valid encoding is rejected with a WireError."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ikev1d.wire import (
    HEADER_LENGTH,
    Message,
    Payload,
    WireError,
    decode_message,
    decode_payloads,
    decode_payloads_with_spans,
    encode_header,
    encode_payloads,
    first_payload_type,
    split_message,
)
from tests.wire_helpers import messages, payload_tuples, payloads, sample_messages

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(payloads)
def test_payload_body_roundtrip(p: Payload) -> None:
    body = p.encode_body()
    (decoded,) = decode_payloads(p.payload_type, encode_payloads([p]))
    assert decoded == p
    assert decoded.encode_body() == body


@SETTINGS
@given(payload_tuples)
def test_payload_chain_roundtrip(ps: tuple[Payload, ...]) -> None:
    data = encode_payloads(ps)
    assert decode_payloads(first_payload_type(ps), data) == ps
    spans = decode_payloads_with_spans(first_payload_type(ps), data)
    assert [s.payload for s in spans] == list(ps)
    assert b"".join(s.raw(data) for s in spans) == data
    for s, p in zip(spans, ps, strict=True):
        assert s.body(data) == p.encode_body()


@SETTINGS
@given(messages)
def test_message_roundtrip(m: Message) -> None:
    data = m.encode()
    decoded = decode_message(data)
    assert decoded == m.normalized()
    assert decoded.encode() == data
    header, body = split_message(data)
    assert header == decoded.header
    assert body == encode_payloads(m.payloads)


@SETTINGS
@given(payload_tuples.filter(bool), st.binary(min_size=1, max_size=32))
def test_trailing_bytes_only_with_allow_trailing(ps: tuple[Payload, ...], pad: bytes) -> None:
    data = encode_payloads(ps) + pad
    assert decode_payloads(first_payload_type(ps), data, allow_trailing=True) == ps
    with pytest.raises(WireError):
        decode_payloads(first_payload_type(ps), data)


@SETTINGS
@given(payload_tuples.filter(bool))
def test_every_prefix_of_a_chain_is_rejected(ps: tuple[Payload, ...]) -> None:
    data = encode_payloads(ps)
    first = first_payload_type(ps)
    for n in range(len(data)):
        with pytest.raises(WireError):
            decode_payloads(first, data[:n])
        # Also after decryption, where trailing bytes are tolerated: a cut chain
        # is still an error, never a shorter message.
        with pytest.raises(WireError):
            decode_payloads(first, data[:n], allow_trailing=True)


@settings(max_examples=100, deadline=None)
@given(messages)
def test_every_prefix_of_a_message_is_rejected(m: Message) -> None:
    data = m.encode()
    for n in range(len(data)):
        prefix = data[:n]
        with pytest.raises(WireError):
            decode_message(prefix)
        if n >= HEADER_LENGTH and m.payloads:
            # The same prefix with a header whose length field agrees with it: the
            # payload chain itself must notice the cut.
            fixed = (
                encode_header(decode_message(data).header, n - HEADER_LENGTH)
                + data[HEADER_LENGTH:n]
            )
            with pytest.raises(WireError):
                decode_message(fixed)


def test_sample_messages_roundtrip_and_prefixes() -> None:
    for sample in sample_messages():
        data = sample.message.encode()
        assert decode_message(data) == sample.message.normalized(), sample.name
        hdr = decode_message(data).header
        for n in range(HEADER_LENGTH, len(data)):
            cut = encode_header(hdr, n - HEADER_LENGTH) + data[HEADER_LENGTH:n]
            with pytest.raises(WireError):
                decode_message(cut)
