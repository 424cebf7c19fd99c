"""Byte spans of the payloads in a message body, as received.

Several IKEv1 hashes cover payload bytes exactly as they were sent (RFC 2409
section 5: SAi_b and IDii_b; section 5.5: "the entire message ... following the
HASH payload"), so the engine needs the raw bytes, not a re-encoding. Call this
only on a body that ``decode_payloads`` accepted: lengths are trusted here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PayloadSpan:
    payload_type: int
    start: int
    """Offset of the 4-byte generic payload header within the body."""
    end: int

    def body(self, data: bytes) -> bytes:
        """The payload body without its generic header (the "_b" of RFC 2409)."""
        return data[self.start + 4 : self.end]


def payload_spans(first_type: int, body: bytes) -> list[PayloadSpan]:
    spans: list[PayloadSpan] = []
    offset = 0
    ptype = first_type
    while ptype != 0 and offset + 4 <= len(body):
        next_type = body[offset]
        length = int.from_bytes(body[offset + 2 : offset + 4], "big")
        if length < 4 or offset + length > len(body):
            break
        spans.append(PayloadSpan(ptype, offset, offset + length))
        offset += length
        ptype = next_type
    return spans
