"""ESP seal/open (RFC 4303, RFC 4106): round trips, an independent reference, every refusal.

The reference sealer below builds packets straight from the RFC text with
fresh ``cryptography`` contexts and the stdlib ``hmac`` module, so it shares
none of esp.py's shortcuts (the long-lived CBC contexts, pre-keyed HMACs).
tests/interop/test_esp_tshark.py checks the same packets against tshark.
"""

from __future__ import annotations

import hmac
import itertools
import os
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from ikev1d.dataplane.esp import (
    EspAlgorithm,
    EspError,
    EspIcvError,
    EspMalformedError,
    EspReplayError,
    EspSequenceExhausted,
    InboundSa,
    OutboundSa,
    UnsupportedEspAlgorithm,
    esp_algorithm,
    keymat_length,
    peek_seq,
    peek_spi,
)
from ikev1d.dataplane.packet import build_ipv4_packet, build_udp_header, tunnel_next_header

SPI = 0xC1234567

# Every transform: (strongSwan encryption, key bits, integrity, GCM ICV octets)
TRANSFORMS = [
    ("aesgcm", 128, None, 16),
    ("aesgcm", 192, None, 16),
    ("aesgcm", 256, None, 16),
    ("aesgcm", 128, None, 8),
    ("aesgcm", 256, None, 12),
    ("aes", 128, "sha1", 0),
    ("aes", 128, "sha256", 0),
    ("aes", 192, "sha384", 0),
    ("aes", 256, "sha512", 0),
    ("aes", 256, "md5", 0),
    ("3des", 192, "sha1", 0),
    ("3des", 192, "sha256", 0),
    ("null", 0, "sha256", 0),
]
IDS = [f"{e}{b}-{i or f'icv{c}'}" for e, b, i, c in TRANSFORMS]


def _alg(t: tuple[str, int, str | None, int]) -> EspAlgorithm:
    return esp_algorithm(*t)


def _pair(alg: EspAlgorithm, window: int = 128, **kw: object) -> tuple[OutboundSa, InboundSa]:
    keymat = os.urandom(keymat_length(alg))
    return OutboundSa(SPI, alg, keymat, **kw), InboundSa(SPI, alg, keymat, window)  # type: ignore[arg-type]


def _counting_iv() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(4, "big") * (n // 4)


# --- independent reference (RFC text, fresh contexts) -----------------------------------

_HASHES = {"hmac-md5-96": "md5", "hmac-sha1-96": "sha1", "hmac-sha256-128": "sha256",
           "hmac-sha384-192": "sha384", "hmac-sha512-256": "sha512"}


def reference_seal(
    alg: EspAlgorithm, keymat: bytes, seq: int, payload: bytes, next_header: int, iv: bytes,
    pad: bytes | None = None,
) -> bytes:
    """RFC 4303 §2 packet; `pad` overrides the padding (to build bad packets)."""
    if pad is None:
        pad = bytes(range(1, 1 + (-(len(payload) + 2) % alg.block_size)))
    return raw_seal(alg, keymat, seq, payload + pad + bytes([len(pad), next_header]), iv)


def raw_seal(alg: EspAlgorithm, keymat: bytes, seq: int, plaintext: bytes, iv: bytes) -> bytes:
    """A packet with a valid ICV around `plaintext` (payload, padding and trailer, as given)."""
    enc_key = keymat[: alg.key_length]
    salt = keymat[alg.key_length : alg.key_length + alg.salt_length]
    integ_key = keymat[alg.key_length + alg.salt_length : keymat_length(alg)]
    header = struct.pack("!II", SPI, seq)
    if alg.aead:
        # RFC 4106 §3.1, §4, §5: nonce = salt | explicit IV, AAD = SPI | seq.
        explicit_iv = seq.to_bytes(8, "big")
        sealed = AESGCM(enc_key).encrypt(salt + explicit_iv, plaintext, header)
        return header + explicit_iv + sealed[: len(sealed) - 16 + alg.icv_length]
    if alg.encryption == "null":
        body = header + plaintext
    else:
        cipher = TripleDES(enc_key) if alg.encryption == "3des-cbc" else algorithms.AES(enc_key)
        enc = Cipher(cipher, modes.CBC(iv)).encryptor()
        body = header + iv + enc.update(plaintext) + enc.finalize()
    assert alg.integrity is not None
    return body + hmac.new(integ_key, body, _HASHES[alg.integrity]).digest()[: alg.icv_length]


# --- algorithms and KEYMAT ---------------------------------------------------------------


def test_esp_algorithm_from_strongswan_names() -> None:
    assert esp_algorithm("aesgcm", 128, None, 16) == EspAlgorithm("aes-gcm", 16, 16, None)
    assert esp_algorithm("aes", 256, "sha256") == EspAlgorithm("aes-cbc", 32, 16,
                                                               "hmac-sha256-128")
    assert esp_algorithm("aes", 128, "sha1", 0) == EspAlgorithm("aes-cbc", 16, 12, "hmac-sha1-96")
    assert esp_algorithm("3des", 0, "sha1") == EspAlgorithm("3des-cbc", 24, 12, "hmac-sha1-96")
    assert esp_algorithm("aes", 192, "sha384").icv_length == 24
    assert esp_algorithm("aes", 256, "sha512").icv_length == 32
    assert esp_algorithm("null", 0, "md5") == EspAlgorithm("null", 0, 12, "hmac-md5-96")


@pytest.mark.parametrize(
    ("args", "length"),
    [
        # RFC 4106 §8.1: key + 4 salt octets; RFC 2409 §5.5: encryption then integrity key.
        (("aesgcm", 128, None, 16), 20),
        (("aesgcm", 256, None, 16), 36),
        (("aes", 128, "sha1", 0), 16 + 20),
        (("aes", 256, "sha256", 0), 32 + 32),
        (("aes", 192, "sha384", 0), 24 + 48),
        (("aes", 256, "sha512", 0), 32 + 64),
        (("3des", 192, "sha1", 0), 24 + 20),
        (("aes", 128, "md5", 0), 16 + 16),
        (("null", 0, "sha1", 0), 20),
    ],
)
def test_keymat_length(args: tuple[str, int, str | None, int], length: int) -> None:
    assert keymat_length(esp_algorithm(*args)) == length


@pytest.mark.parametrize(
    "args",
    [
        ("des", 64, "sha1", 0),
        ("aes", 100, "sha1", 0),
        ("aes", 128, None, 16),  # CBC without integrity
        ("aesgcm", 128, "sha1", 16),  # AEAD with integrity
        ("aesgcm", 128, None, 4),
        ("aes", 128, "sha3", 0),
        ("3des", 128, "sha1", 0),
        ("null", 0, None, 0),
    ],
)
def test_unsupported_transforms_refused(args: tuple[str, int, str | None, int]) -> None:
    with pytest.raises(UnsupportedEspAlgorithm):
        esp_algorithm(*args)


def test_short_keymat_refused() -> None:
    alg = esp_algorithm("aes", 128, "sha256")
    with pytest.raises(EspError):
        OutboundSa(SPI, alg, bytes(keymat_length(alg) - 1))
    with pytest.raises(EspError):
        InboundSa(SPI, alg, bytes(keymat_length(alg) - 1))


# --- round trips and the reference -------------------------------------------------------


@pytest.mark.parametrize("transform", TRANSFORMS, ids=IDS)
def test_round_trip_tunnel_and_transport(transform: tuple[str, int, str | None, int]) -> None:
    alg = _alg(transform)
    out, inb = _pair(alg)
    inner4 = build_ipv4_packet("10.1.0.1", "10.2.0.1", 17,
                               build_udp_header(1, 2, b"x" * 30) + b"x" * 30)
    inner6 = bytes([0x60]) + bytes(39) + b"payload"
    cases = [(tunnel_next_header(inner4), inner4), (tunnel_next_header(inner6), inner6)]
    cases += [(17, os.urandom(n)) for n in (*range(0, 40), 100, 1400, 1452)]
    total = 0
    for next_header, payload in cases:
        packet = out.seal(payload, next_header)
        assert peek_spi(packet) == SPI
        assert peek_seq(packet) == out.seq
        # RFC 4303 §2.4: 4-octet alignment of everything after the IV, before the ICV.
        assert (len(packet) - 8 - alg.iv_length - alg.icv_length) % alg.block_size == 0
        assert inb.open(packet) == (next_header, payload)
        total += len(payload)
    assert cases[0][0] == 4 and cases[1][0] == 41
    assert (out.counters.packets, out.counters.bytes) == (len(cases), total)
    assert (inb.counters.packets, inb.counters.bytes) == (len(cases), total)
    assert inb.counters.replayed == inb.counters.failed_icv == inb.counters.malformed == 0


@pytest.mark.parametrize("transform", TRANSFORMS, ids=IDS)
def test_seal_matches_reference(transform: tuple[str, int, str | None, int]) -> None:
    """Byte-exact against fresh contexts per packet: also checks the CBC chaining trick."""
    alg = _alg(transform)
    keymat = os.urandom(keymat_length(alg) + 7)  # extra KEYMAT octets are ignored
    ivs = _counting_iv()
    out = OutboundSa(SPI, alg, keymat, random_bytes=ivs)
    ref_ivs = _counting_iv()
    for n, size in enumerate((0, 1, 15, 16, 17, 200, 1400, 3)):
        payload = os.urandom(size)
        iv = ref_ivs(alg.iv_length) if alg.iv_length and not alg.aead else b""
        expected = reference_seal(alg, keymat, n + 1, payload, 4, iv)
        assert out.seal(payload, 4) == expected


CBC_TRANSFORMS = [t for t in TRANSFORMS if t[0] in ("aes", "3des")]


@pytest.mark.parametrize("transform", CBC_TRANSFORMS, ids=[f"{t[0]}{t[1]}-{t[2]}"
                                                          for t in CBC_TRANSFORMS])
def test_default_cbc_ivs_are_the_cipher_applied_to_a_fresh_input(
    transform: tuple[str, int, str | None, int],
) -> None:
    """Without a random source, each IV is E_K(seq ^ the previous packet's last
    ciphertext block) (RFC 3602 §2.4: unpredictable without the key): checked with an
    independent single-block encryption; the packet is byte-exact CBC under the IV
    it carries, opens, and no IV repeats, also across cooling (the chain restarts
    at zero, the sequence number does not)."""
    alg = _alg(transform)
    keymat = os.urandom(keymat_length(alg))
    out, inb = OutboundSa(SPI, alg, keymat), InboundSa(SPI, alg, keymat)
    key = keymat[: alg.key_length]
    cipher = TripleDES(key) if alg.encryption == "3des-cbc" else algorithms.AES(key)
    block = alg.block_size
    chain = bytes(block)
    ivs = set()
    for n, size in enumerate((0, 1, 15, 16, 17, 200, 1400, 3, 64, 64)):
        payload = os.urandom(size)
        packet = out.seal(payload, 4)
        seq = n + 1
        iv = packet[8:8 + block]
        fresh = seq ^ int.from_bytes(chain, "big")
        single = Cipher(cipher, modes.ECB()).encryptor()
        assert iv == single.update(fresh.to_bytes(block, "big")) + single.finalize()
        assert packet == reference_seal(alg, keymat, seq, payload, 4, iv)
        assert inb.open(packet) == (4, payload)
        ivs.add(iv)
        chain = packet[len(packet) - alg.icv_length - block: len(packet) - alg.icv_length]
        if n == 5:
            out.cool()
            chain = bytes(block)
    assert len(ivs) == 10


@pytest.mark.parametrize("transform", TRANSFORMS, ids=IDS)
def test_contexts_built_on_first_use_and_dropped_when_cooled(
    transform: tuple[str, int, str | None, int],
) -> None:
    """An SA holds no OpenSSL context until it carries a packet; cooling it between
    packets changes no octet sealed, no sequence number and no replay verdict."""
    alg = _alg(transform)
    keymat = os.urandom(keymat_length(alg))
    out = OutboundSa(SPI, alg, keymat, random_bytes=_counting_iv())
    inb = InboundSa(SPI, alg, keymat)
    for sa in (out, inb):
        assert not sa.warm
        assert (sa._hmac, sa._cbc, sa._aesgcm) == (None, None, None)
    ref_ivs = _counting_iv()
    sent: list[bytes] = []
    for n, size in enumerate((0, 17, 1400, 3, 64)):
        payload = os.urandom(size)
        iv = ref_ivs(alg.iv_length) if alg.iv_length and not alg.aead else b""
        packet = out.seal(payload, 4)
        assert out.warm
        assert packet == reference_seal(alg, keymat, n + 1, payload, 4, iv)
        assert inb.open(packet) == (4, payload)
        assert inb.warm
        sent.append(packet)
        if n % 2 == 0:
            out.cool()
            inb.cool()
            assert (out._hmac, out._cbc, out._aesgcm) == (None, None, None)
            assert (inb._hmac, inb._cbc, inb._aesgcm) == (None, None, None)
    assert out.seq == len(sent)
    inb.cool()
    with pytest.raises(EspReplayError):
        inb.open(sent[-1])
    assert inb.counters.packets == len(sent)
    assert inb.counters.replayed == 1


@pytest.mark.parametrize("transform", TRANSFORMS, ids=IDS)
def test_open_reference_packets_out_of_order(transform: tuple[str, int, str | None, int]) -> None:
    alg = _alg(transform)
    keymat = os.urandom(keymat_length(alg))
    inb = InboundSa(SPI, alg, keymat)
    packets: dict[int, tuple[bytes, bytes]] = {}
    for seq in range(1, 12):
        payload = os.urandom(seq * 7)
        iv = os.urandom(alg.iv_length)
        packets[seq] = (payload, reference_seal(alg, keymat, seq, payload, 41, iv))
    for seq in (3, 1, 2, 11, 5, 4, 10, 6, 9, 7, 8):
        payload, packet = packets[seq]
        assert inb.open(packet) == (41, payload)


def test_gcm_explicit_iv_is_the_sequence_number() -> None:
    out, _ = _pair(esp_algorithm("aesgcm", 128, None, 16))
    for seq in (1, 2, 3):
        assert out.seal(b"abc", 17)[8:16] == seq.to_bytes(8, "big")


def test_cbc_iv_comes_from_the_random_source() -> None:
    alg = esp_algorithm("aes", 128, "sha256")
    calls: list[int] = []

    def source(n: int) -> bytes:
        calls.append(n)
        return bytes([len(calls)]) * n

    out = OutboundSa(SPI, alg, bytes(keymat_length(alg)), random_bytes=source)
    first, second = out.seal(b"a", 4), out.seal(b"a", 4)
    assert calls == [16, 16]
    assert first[8:24] == b"\x01" * 16 and second[8:24] == b"\x02" * 16
    assert first[24:40] != second[24:40]


# --- replay ----------------------------------------------------------------------------


@pytest.mark.parametrize("transform", [TRANSFORMS[0], TRANSFORMS[6], TRANSFORMS[10]],
                         ids=[IDS[0], IDS[6], IDS[10]])
def test_replayed_packet_refused_and_counted(transform: tuple[str, int, str | None, int]) -> None:
    out, inb = _pair(_alg(transform))
    packet = out.seal(b"once", 17)
    assert inb.open(packet) == (17, b"once")
    with pytest.raises(EspReplayError):
        inb.open(packet)
    assert inb.counters.replayed == 1
    assert inb.counters.packets == 1


def test_window_edges() -> None:
    out, inb = _pair(esp_algorithm("aesgcm", 128, None, 16), window=32)
    packets = [out.seal(bytes([i % 256]), 17) for i in range(1, 101)]  # seq 1..100
    inb.open(packets[99])  # seq 100: window now covers 69..100
    with pytest.raises(EspReplayError):
        inb.open(packets[67])  # seq 68: left of the window
    assert inb.open(packets[68]) == (17, bytes([69]))  # seq 69: oldest in the window
    with pytest.raises(EspReplayError):
        inb.open(packets[68])
    for seq in (80, 70, 99, 71):  # out of order inside the window: each accepted once
        assert inb.open(packets[seq - 1])[1] == bytes([seq])
        with pytest.raises(EspReplayError):
            inb.open(packets[seq - 1])
    assert inb.counters.replayed == 6
    assert inb.counters.packets == 6


# --- integrity --------------------------------------------------------------------------


@pytest.mark.parametrize("transform", TRANSFORMS, ids=IDS)
def test_every_flipped_bit_is_refused(transform: tuple[str, int, str | None, int]) -> None:
    alg = _alg(transform)
    keymat = os.urandom(keymat_length(alg))
    out = OutboundSa(SPI, alg, keymat)
    for _ in range(4):
        out.seal(b"skip", 4)
    packet = out.seal(b"secret payload!", 4)  # seq 5
    inb = InboundSa(SPI, alg, keymat)
    for bit in range(len(packet) * 8):
        tampered = bytearray(packet)
        tampered[bit // 8] ^= 0x80 >> (bit % 8)
        expected = EspMalformedError if bit < 32 else EspIcvError  # SPI bits: not our SA
        with pytest.raises(expected):
            inb.open(bytes(tampered))
    assert inb.counters.failed_icv == (len(packet) - 4) * 8
    assert inb.counters.malformed == 32
    assert inb.counters.packets == 0
    # Nothing moved the window or the decryption state: the real packet still opens.
    assert inb.open(packet) == (4, b"secret payload!")
    assert inb.counters.bytes == len(b"secret payload!")


def test_icv_checked_before_decryption() -> None:
    """A forged CBC packet must not reach the cipher: the ICV fails first (RFC 4303 §3.4.4)."""
    alg = esp_algorithm("aes", 128, "sha256")
    keymat = os.urandom(keymat_length(alg))
    inb = InboundSa(SPI, alg, keymat)
    inb.warm_up()
    decrypted: list[int] = []
    real = inb._cbc
    assert real is not None

    class Spy:
        def decrypt_with_iv(self, iv_and_ct: memoryview) -> bytes:
            decrypted.append(len(iv_and_ct) - 16)
            assert real is not None
            return real.decrypt_with_iv(iv_and_ct)

    inb._cbc = Spy()  # type: ignore[assignment]
    forged = struct.pack("!II", SPI, 1) + os.urandom(16 + 32 + 16)
    with pytest.raises(EspIcvError):
        inb.open(forged)
    assert decrypted == []
    good = reference_seal(alg, keymat, 1, b"hello", 4, os.urandom(16))
    assert inb.open(good) == (4, b"hello")
    assert decrypted == [16]


# --- malformed --------------------------------------------------------------------------


@pytest.mark.parametrize("transform", TRANSFORMS, ids=IDS)
@pytest.mark.parametrize(
    "pad",
    [b"\x01\x03", b"\x02\x01", b"\x00", b"\x01\x02\x04", b"\xff" * 7],
    ids=["gap", "reversed", "zero", "wrong-last", "ff"],
)
def test_bad_padding_refused(transform: tuple[str, int, str | None, int], pad: bytes) -> None:
    alg = _alg(transform)
    keymat = os.urandom(keymat_length(alg))
    inb = InboundSa(SPI, alg, keymat)
    # Make the total block aligned with extra payload so only the pad contents are wrong.
    payload = b"p" * (-(len(pad) + 2) % alg.block_size)
    packet = reference_seal(alg, keymat, 1, payload, 4, os.urandom(alg.iv_length), pad=pad)
    with pytest.raises(EspMalformedError, match="padding"):
        inb.open(packet)
    assert inb.counters.malformed == 1
    assert inb.counters.packets == 0
    # The window did not move: a good packet with the same number is accepted.
    good = reference_seal(alg, keymat, 1, b"ok", 4, os.urandom(alg.iv_length))
    assert inb.open(good) == (4, b"ok")


@pytest.mark.parametrize("transform", TRANSFORMS, ids=IDS)
def test_pad_length_beyond_plaintext_refused(transform: tuple[str, int, str | None, int]) -> None:
    alg = _alg(transform)
    keymat = os.urandom(keymat_length(alg))
    inb = InboundSa(SPI, alg, keymat)
    # Two blocks of plaintext whose pad length octet claims 255 octets of padding.
    fill = alg.block_size * 2 - 2
    forged = raw_seal(alg, keymat, 1, bytes(range(1, fill + 1)) + bytes([255, 4]),
                      os.urandom(alg.iv_length))
    with pytest.raises(EspMalformedError, match="padding"):
        inb.open(forged)
    # All padding, no payload, is fine.
    exact = raw_seal(alg, keymat, 1, bytes(range(1, fill + 1)) + bytes([fill, 4]),
                     os.urandom(alg.iv_length))
    assert inb.open(exact) == (4, b"")


@pytest.mark.parametrize("transform", TRANSFORMS, ids=IDS)
def test_truncated_packets_refused(transform: tuple[str, int, str | None, int]) -> None:
    alg = _alg(transform)
    out, inb = _pair(alg)
    packet = out.seal(b"some payload here", 4)
    minimum = 8 + alg.iv_length + (alg.block_size if not alg.aead and alg.iv_length else 2)
    minimum += alg.icv_length
    for cut in range(len(packet)):
        with pytest.raises((EspMalformedError, EspIcvError)) as info:
            inb.open(packet[:cut])
        if cut < minimum:
            assert info.type is EspMalformedError, cut
    assert inb.counters.packets == 0
    assert inb.counters.malformed + inb.counters.failed_icv == len(packet)
    assert inb.open(packet) == (4, b"some payload here")


def test_cbc_ciphertext_not_block_aligned_is_malformed() -> None:
    alg = esp_algorithm("aes", 128, "sha256")
    out, inb = _pair(alg)
    packet = out.seal(b"x" * 40, 4)
    with pytest.raises(EspMalformedError, match="multiple"):
        inb.open(packet[:-17] + packet[-16:])  # one ciphertext octet removed


def test_wrong_spi_is_malformed() -> None:
    alg = esp_algorithm("aesgcm", 128, None, 16)
    keymat = os.urandom(keymat_length(alg))
    packet = OutboundSa(SPI + 1, alg, keymat).seal(b"x", 4)
    with pytest.raises(EspMalformedError, match="SPI"):
        InboundSa(SPI, alg, keymat).open(packet)


def test_peek_needs_a_header() -> None:
    with pytest.raises(EspMalformedError):
        peek_spi(b"\x00" * 7)
    with pytest.raises(EspMalformedError):
        peek_seq(b"")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), transform=st.sampled_from(TRANSFORMS))
def test_garbage_only_raises_esp_errors(
    data: bytes, transform: tuple[str, int, str | None, int]
) -> None:
    alg = _alg(transform)
    inb = InboundSa(SPI, alg, bytes(range(keymat_length(alg))))
    with pytest.raises(EspError):
        inb.open(struct.pack("!I", SPI) + data)


# --- sequence numbers ----------------------------------------------------------------------


def test_sequence_numbers_start_at_one_and_never_wrap() -> None:
    out, _ = _pair(esp_algorithm("aes", 128, "sha1"), max_seq=3)
    assert (out.seq, out.exhausted, out.remaining) == (0, False, 3)
    packets = [out.seal(b"x", 4) for _ in range(3)]
    assert [peek_seq(p) for p in packets] == [1, 2, 3]
    assert (out.seq, out.exhausted, out.remaining) == (3, True, 0)
    with pytest.raises(EspSequenceExhausted):
        out.seal(b"x", 4)
    assert out.seq == 3 and out.counters.packets == 3


def test_full_32_bit_space_ends_at_2_pow_32_minus_1() -> None:
    alg = esp_algorithm("aesgcm", 128, None, 16)
    keymat = os.urandom(keymat_length(alg))
    out = OutboundSa(SPI, alg, keymat)
    out.seq = 2**32 - 2  # as if 2^32 - 2 packets had been sent
    last = out.seal(b"x", 4)
    assert peek_seq(last) == 2**32 - 1
    assert out.exhausted
    with pytest.raises(EspSequenceExhausted):
        out.seal(b"x", 4)
    inb = InboundSa(SPI, alg, keymat)
    assert inb.open(last) == (4, b"x")


def test_bad_constructor_arguments() -> None:
    alg = esp_algorithm("aesgcm", 128, None, 16)
    keymat = bytes(keymat_length(alg))
    with pytest.raises(EspError):
        OutboundSa(0, alg, keymat)
    with pytest.raises(EspError):
        InboundSa(2**32, alg, keymat)
    with pytest.raises(EspError):
        OutboundSa(SPI, alg, keymat, max_seq=2**32)
    with pytest.raises(EspError):
        OutboundSa(SPI, alg, keymat).seal(b"", 256)
    with pytest.raises(ValueError, match="positive"):
        InboundSa(SPI, alg, keymat, replay_window=0)
    short_iv = OutboundSa(SPI, esp_algorithm("aes", 128, "sha1"),
                          bytes(keymat_length(esp_algorithm("aes", 128, "sha1"))),
                          random_bytes=lambda n: b"\x00" * (n - 1))
    with pytest.raises(EspError, match="IV"):
        short_iv.seal(b"", 4)
