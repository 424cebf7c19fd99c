"""ESP packet processing (RFC 4303), pure: bytes in, bytes out, no I/O, no clock.

One ``OutboundSa`` seals packets we send, one ``InboundSa`` opens packets we
receive; the data plane backends (TUN userspace, tests, pcap writers) own the
sockets and look SAs up by SPI (``peek_spi``).

Packet layout (RFC 4303 §2)::

    SPI (4) | Sequence Number (4) | IV (0/8/16) | ciphertext | ICV

    ciphertext = E(payload | padding 1,2,3,... | pad length (1) | next header (1))

Transforms:

* AES-CBC (RFC 3602) and 3DES-CBC (RFC 2451) with HMAC-MD5-96 (RFC 2403),
  HMAC-SHA1-96 (RFC 2404) or HMAC-SHA2 (RFC 4868): encrypt-then-MAC, the ICV
  covers SPI | seq | IV | ciphertext (RFC 4303 §2.8, §3.3.2) and is checked
  before anything is decrypted (§3.4.4).
* AES-GCM (RFC 4106): nonce = 4-byte salt from KEYMAT | 8-byte explicit IV
  (§3.1, §4), AAD = SPI | seq (§5); 8, 12 or 16 octet ICV (§6).
* NULL encryption (RFC 2410), with an integrity algorithm only.

Speed matters here (this is the per-packet path), so each SA keeps long-lived
OpenSSL contexts: an ``AESGCM`` object, a pre-keyed HMAC that is ``copy()``-ed
per packet, and one CBC context per direction, because building a ``Cipher``
object costs several times more than encrypting 1400 bytes. Sealing, that
context also makes each packet's unpredictable IV, as the encryption of the
sequence number chained to the previous packet, in the same call that
encrypts the payload (see ``_CbcEncryptor``).
SAs are therefore stateful and not thread-safe: use each from one thread (the
event loop).

Those contexts are most of an idle SA's memory (OpenSSL's key schedules and
HMAC states, outside Python's heap), and a gateway holding thousands of road
warriors has most of them idle. So an SA keeps only its keys until it carries
a packet: the first ``seal``/``open`` builds the contexts (``warm``), and
:meth:`OutboundSa.cool` / :meth:`InboundSa.cool` let them go again, which the
data plane does for SAs that carried nothing for a while. Sequence numbers,
replay windows and counters are not contexts and are never dropped. A CBC
context rebuilt this way starts from a zero chaining value, exactly as a new
one does, so the output is unchanged (see ``_CbcEncryptor``).
"""

from __future__ import annotations

import hmac as stdlib_hmac  # compare_digest only; the MACs come from `cryptography`
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hmac
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ikev1d.crypto import transforms
from ikev1d.dataplane.replay import DEFAULT_REPLAY_WINDOW, ReplayWindow
from ikev1d.errors import Ikev1dError
from ikev1d.wire.constants import IPPROTO_NONE

__all__ = [
    "ESP_HEADER_LENGTH",
    "IPPROTO_NONE",
    "EspAlgorithm",
    "EspCounters",
    "EspError",
    "EspIcvError",
    "EspMalformedError",
    "EspReplayError",
    "EspSequenceExhausted",
    "InboundSa",
    "OutboundSa",
    "UnsupportedEspAlgorithm",
    "esp_algorithm",
    "keymat_length",
    "peek_seq",
    "peek_spi",
]

ESP_HEADER_LENGTH: Final = 8
"""SPI and Sequence Number (RFC 4303 §2.1, §2.2)."""

_HEADER = struct.Struct("!II")
_HEADER_IV = struct.Struct("!IIQ")
"""SPI, Sequence Number and the 64-bit explicit IV of AES-GCM (RFC 4106 §3.1)."""
_PAD_BYTES = bytes(range(1, 256))  # RFC 4303 §2.4: padding is 1, 2, 3, ...
_TRAILERS: dict[int, bytes] = {}


def _trailer(pad_length: int, next_header: int) -> bytes:
    """Padding, Pad Length and Next Header (RFC 4303 §2.4-2.6), made once per pair."""
    key = pad_length << 8 | next_header
    try:
        return _TRAILERS[key]
    except KeyError:
        trailer = _TRAILERS[key] = _PAD_BYTES[:pad_length] + bytes((pad_length, next_header))
        return trailer


class EspError(Ikev1dError):
    """A packet was dropped or could not be built; the message says why (no key material)."""


class EspReplayError(EspError):
    """Sequence number already received or left of the replay window (RFC 4303 §3.4.3)."""


class EspIcvError(EspError):
    """Integrity check failed (RFC 4303 §3.4.4): the packet is not from the peer, or was altered."""


class EspMalformedError(EspError):
    """Too short, not block aligned, wrong SPI, or bad padding / pad length."""


class EspSequenceExhausted(EspError):
    """The 32-bit sequence number would wrap (RFC 4303 §3.3.3): the SA must be rekeyed."""


class UnsupportedEspAlgorithm(EspError, ValueError):
    """No such transform, or a combination ESP does not allow (e.g. CBC without integrity)."""


@dataclass(slots=True)
class EspCounters:
    """Per-SA counters; ``bytes`` counts inner payload octets, as strongSwan does."""

    bytes: int = 0
    packets: int = 0
    replayed: int = 0
    failed_icv: int = 0
    malformed: int = 0


# --- transforms ----------------------------------------------------------------------

# The data plane implements the rows of the transform table that have an ESP name:
# AES-CBC (RFC 3602), 3DES-CBC (RFC 2451), AES-GCM (RFC 4106), NULL (RFC 2410);
# HMAC-MD5-96 (RFC 2403), HMAC-SHA1-96 (RFC 2404), HMAC-SHA2 (RFC 4868).
_ENCRYPTIONS: Final = frozenset(
    row.esp_name for row in transforms.ENCRYPTIONS if row.esp_name is not None
)
_AEADS: Final = frozenset(
    row.esp_name for row in transforms.ENCRYPTIONS if row.esp_name is not None and row.aead
)
_BY_PROPOSAL_NAME: Final = {
    row.name: row.esp_name for row in transforms.ENCRYPTIONS if row.esp_name is not None
}


@dataclass(frozen=True)
class EspAlgorithm:
    """An ESP transform: cipher, its key length (octets, without the GCM salt), ICV length."""

    encryption: str
    key_length: int
    icv_length: int
    integrity: str | None
    cipher: transforms.EncryptionTransform = field(init=False, repr=False, compare=False)
    """The transform table's row for `encryption` (and, for AES-GCM, its ICV length)."""
    mac: transforms.IntegrityTransform | None = field(init=False, repr=False, compare=False)
    """The row of `integrity`; None for AES-GCM."""

    def __post_init__(self) -> None:
        if self.encryption not in _ENCRYPTIONS:
            raise UnsupportedEspAlgorithm(f"unsupported ESP encryption {self.encryption!r}")
        aead = self.encryption in _AEADS
        cipher = transforms.encryption_by_esp_name(self.encryption,
                                                   self.icv_length if aead else 0)
        if cipher is None:
            raise UnsupportedEspAlgorithm(f"AES-GCM ICV of {self.icv_length} octets")
        key_octets = [bits // 8 for bits in cipher.key_bits]
        if self.key_length not in key_octets:
            raise UnsupportedEspAlgorithm(
                f"{self.encryption} key length {self.key_length} octets, "
                f"not {transforms.or_list(key_octets)}"
            )
        object.__setattr__(self, "cipher", cipher)
        object.__setattr__(self, "mac", None)
        if aead:
            if self.integrity is not None:
                raise UnsupportedEspAlgorithm("AES-GCM is combined mode: no integrity algorithm")
            return
        if self.integrity is None:
            # RFC 4303 §3.2.2 allows confidentiality-only ESP, but it is open to
            # cut-and-paste attacks (RFC 4303 §3.2.2, Bellovin); nobody should run it.
            raise UnsupportedEspAlgorithm(f"{self.encryption} needs an integrity algorithm")
        integrity = transforms.integrity_by_esp_name(self.integrity)
        if integrity is None:
            raise UnsupportedEspAlgorithm(f"unsupported ESP integrity {self.integrity!r}")
        if self.icv_length != integrity.icv_bytes:
            raise UnsupportedEspAlgorithm(
                f"{self.integrity} has a {integrity.icv_bytes}-octet ICV"
            )
        object.__setattr__(self, "mac", integrity)

    @property
    def aead(self) -> bool:
        return self.cipher.aead

    @property
    def cbc(self) -> bool:
        """A block cipher in CBC mode with a random IV (RFC 3602, RFC 2451)."""
        return not self.cipher.aead and self.cipher.primitive is not None

    @property
    def iv_length(self) -> int:
        return self.cipher.iv_bytes

    @property
    def block_size(self) -> int:
        """What the ciphertext is padded to a multiple of (at least 4, RFC 4303 §2.4)."""
        return self.cipher.esp_block_bytes

    @property
    def salt_length(self) -> int:
        """RFC 4106 §8.1: the last octets of the encryption KEYMAT are the nonce salt."""
        return self.cipher.salt_bytes

    @property
    def integrity_key_length(self) -> int:
        return 0 if self.mac is None else self.mac.hash_bytes

    @property
    def overhead(self) -> int:
        """Octets ESP adds to a payload at most (header, IV, max padding, trailer, ICV)."""
        return ESP_HEADER_LENGTH + self.iv_length + self.block_size - 1 + 2 + self.icv_length


def esp_algorithm(
    encryption: str, key_length_bits: int, integrity: str | None, icv_length: int = 16
) -> EspAlgorithm:
    """An ``EspAlgorithm`` from strongSwan-style names (as in ``aes128gcm16``, ``aes256-sha256``).

    `encryption` is ``aes``, ``aesgcm``, ``3des`` or ``null``; `integrity` ``md5``,
    ``sha1``, ``sha256``, ``sha384``, ``sha512`` or None (AES-GCM). `icv_length`
    (octets) matters only for AES-GCM; HMAC ICV lengths follow from the hash. A
    `key_length_bits` of 0 means the fixed length for 3DES (192) and NULL (0).
    """
    name = _BY_PROPOSAL_NAME.get(encryption)
    if name is None:
        raise UnsupportedEspAlgorithm(f"unsupported ESP encryption {encryption!r}")
    fixed = transforms.encryption_by_esp_name(name)
    if key_length_bits == 0 and fixed is not None and fixed.fixed_key:
        key_length_bits = fixed.key_bits[0]
    if key_length_bits % 8:
        raise UnsupportedEspAlgorithm(f"key length {key_length_bits} is not whole octets")
    if integrity is None:
        return EspAlgorithm(name, key_length_bits // 8, icv_length, None)
    integ = transforms.integrity_by_name(integrity)
    if integ is None:
        raise UnsupportedEspAlgorithm(f"unsupported ESP integrity {integrity!r}")
    return EspAlgorithm(name, key_length_bits // 8, integ.icv_bytes, integ.esp_name)


def keymat_length(alg: EspAlgorithm) -> int:
    """KEYMAT octets one direction needs: encryption key (+ GCM salt), then integrity key.

    RFC 2409 §5.5 and RFC 2407 §4.5: the encryption key is taken first, the
    authentication key from the octets that follow; RFC 4106 §8.1 adds the salt.
    """
    return alg.key_length + alg.salt_length + alg.integrity_key_length


def _split_keymat(alg: EspAlgorithm, keymat: bytes) -> tuple[bytes, bytes, bytes]:
    """(encryption key, GCM salt, integrity key); extra KEYMAT octets are ignored."""
    need = keymat_length(alg)
    if len(keymat) < need:
        raise EspError(f"KEYMAT of {len(keymat)} octets, the transform needs {need}")
    enc_end = alg.key_length
    salt_end = enc_end + alg.salt_length
    return keymat[:enc_end], keymat[enc_end:salt_end], keymat[salt_end:need]


def _block_cipher(alg: EspAlgorithm, key: bytes) -> CipherAlgorithm:
    if alg.cipher.primitive is None:
        raise EspError(f"{alg.encryption} has no block cipher")
    return alg.cipher.primitive(key)


def peek_spi(packet: bytes) -> int:
    """The SPI of an ESP packet, to find its inbound SA (RFC 4303 §2.1)."""
    if len(packet) < ESP_HEADER_LENGTH:
        raise EspMalformedError(f"ESP packet of {len(packet)} octets has no header")
    spi: int = _HEADER.unpack_from(packet)[0]
    return spi


def peek_seq(packet: bytes) -> int:
    """The sequence number field of an ESP packet (RFC 4303 §2.2)."""
    if len(packet) < ESP_HEADER_LENGTH:
        raise EspMalformedError(f"ESP packet of {len(packet)} octets has no header")
    seq: int = _HEADER.unpack_from(packet)[1]
    return seq


# --- CBC over one long-lived context ---------------------------------------------------


class _CbcEncryptor:
    """CBC encryption with a fresh IV per packet, on one OpenSSL context per SA.

    A CBC context XORs the first block of its next input with the last
    ciphertext block it produced (its chaining value C). Two ways to use that:

    * :meth:`encrypt_with_iv` (the default, ``update`` of the context): the input
      is one block S (the packet's sequence number) followed by the plaintext. The
      first output block is E(S ^ C), which becomes the packet's IV: the next
      block is E(P0 ^ E(S ^ C)), exactly CBC under that IV (RFC 3602 §3). An IV
      that is the block cipher applied, under the SA's key, to an input never
      enciphered before is unpredictable to anyone without the key, as RFC 3602
      §2.4 and RFC 4303 §3.3.2 require (NIST SP 800-38A Appendix C gives this
      construction; S is unique per SA since sequence numbers never repeat,
      RFC 4303 §3.3.3, and C is the previous packet's last ciphertext block). It
      costs one block of encryption instead of a ``getrandom`` call, and the IV
      and ciphertext come out of one call, already adjacent.
    * :meth:`encrypt` with an IV from a random source (``OutboundSa(random_bytes=...)``):
      feeding P0 ^ C ^ IV instead of P0 yields E(P0 ^ IV), CBC under that IV.

    Every input is a whole number of blocks, so the context holds nothing back.
    """

    __slots__ = ("_block", "_chain", "_ctx", "encrypt_with_iv")

    def __init__(self, cipher: CipherAlgorithm, block: int) -> None:
        self._ctx = Cipher(cipher, modes.CBC(bytes(block))).encryptor()
        self._block = block
        self._chain = 0
        self.encrypt_with_iv: Callable[[bytes], bytes] = self._ctx.update
        """IV block source S | plaintext (block aligned) -> IV | ciphertext (see above)."""

    def encrypt(self, iv: bytes, plaintext: bytearray) -> bytes:
        """Encrypt `plaintext` (block aligned; its first block is overwritten) under `iv`."""
        b = self._block
        first = int.from_bytes(plaintext[:b], "big") ^ int.from_bytes(iv, "big") ^ self._chain
        plaintext[:b] = first.to_bytes(b, "big")
        ciphertext = self._ctx.update(plaintext)
        self._chain = int.from_bytes(ciphertext[-b:], "big")
        return ciphertext


class _CbcDecryptor:
    """CBC decryption on one context, the packet's IV fed in as the first block.

    Each output block is D(C[i]) ^ C[i-1] (RFC 3602 §2.3 / §3): given IV | C0 | C1 ...,
    the context's output for C0 is D(C0) ^ IV = P0, whatever it held before; only the
    output for the IV block itself depends on that (it is D(IV) ^ chain) and is dropped.
    """

    __slots__ = ("_block", "_ctx", "decrypt_with_iv")

    def __init__(self, cipher: CipherAlgorithm, block: int) -> None:
        self._ctx = Cipher(cipher, modes.CBC(bytes(block))).decryptor()
        self._block = block
        self.decrypt_with_iv: Callable[[memoryview], bytes] = self._ctx.update
        """IV | ciphertext -> one block to drop (the IV's) | plaintext: the caller
        slices once, where it cuts the padding off anyway."""



# --- SAs ------------------------------------------------------------------------------


class OutboundSa:
    """Seals packets for one outbound SA: sequence numbers, padding, IV, encryption, ICV.

    CBC IVs must be unpredictable (RFC 4303 §3.3.2, RFC 3602 §2.4): by default
    each is the block cipher's encryption of the sequence number chained to the
    previous packet (see ``_CbcEncryptor``); `random_bytes`, if given, supplies
    them instead (tests pass a deterministic source to compare with reference
    packets). AES-GCM uses the sequence number as its explicit IV, unique per key
    as RFC 4106 §3.1 requires, so it needs no randomness.
    """

    # Two per tunnel, held for its lifetime: slots instead of per-instance dicts.
    __slots__ = ("_aesgcm", "_block", "_cbc", "_enc_key", "_hmac", "_icv_length",
                 "_integ_key", "_iv_length", "_random_bytes", "_salt", "alg", "counters",
                 "idle_mark", "max_seq", "seq", "spi", "warm")

    def __init__(
        self,
        spi: int,
        alg: EspAlgorithm,
        keymat: bytes,
        *,
        max_seq: int = 2**32 - 1,
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        if not 0 < spi < 2**32:
            raise EspError(f"SPI {spi:#x} is not a non-zero 32-bit value")
        if not 0 < max_seq < 2**32:
            raise EspError(f"max_seq {max_seq} is not a positive 32-bit value")
        self.spi = spi
        self.alg = alg
        self.max_seq = max_seq
        self.seq = 0
        """Sequence number of the last packet sealed; the first packet gets 1 (RFC 4303 §3.3.3)."""
        self.counters = EspCounters()
        self._random_bytes = random_bytes
        enc_key, salt, integ_key = _split_keymat(alg, keymat)
        self._enc_key = enc_key
        self._integ_key = integ_key
        self._salt = salt
        self._block = alg.block_size
        self._iv_length = alg.iv_length
        self._icv_length = alg.icv_length
        self._hmac: hmac.HMAC | None = None
        self._cbc: _CbcEncryptor | None = None
        self._aesgcm: AESGCM | None = None
        self.warm = False
        """Whether the OpenSSL contexts exist; the first ``seal`` builds them."""
        self.idle_mark = -1
        """``counters.packets`` when the data plane last looked (see ``Sad.cool_idle``)."""

    def warm_up(self) -> None:
        """Build the OpenSSL contexts from the keys (the first packet after idle pays this)."""
        alg = self.alg
        self._hmac = _make_hmac(alg, self._integ_key)
        self._cbc = (
            _CbcEncryptor(_block_cipher(alg, self._enc_key), self._block)
            if alg.cbc
            else None
        )
        self._aesgcm = AESGCM(self._enc_key) if alg.aead else None
        self.warm = True

    def cool(self) -> None:
        """Let the contexts go; the keys, sequence number and counters stay."""
        self._hmac = self._cbc = self._aesgcm = None
        self.warm = False

    @property
    def exhausted(self) -> bool:
        """No sequence number is left: the SA must have been replaced by now."""
        return self.seq >= self.max_seq

    @property
    def remaining(self) -> int:
        """How many more packets this SA may seal."""
        return self.max_seq - self.seq

    def seal(self, payload: bytes, next_header: int) -> bytes:
        """The ESP packet carrying `payload`, whose protocol is `next_header`.

        Tunnel mode: `payload` is the whole inner IP packet, `next_header` 4 (IPv4)
        or 41 (IPv6). Transport mode: the upper-layer payload and its protocol.
        Raises EspSequenceExhausted instead of ever reusing a sequence number.
        """
        seq = self.seq
        if seq >= self.max_seq:
            raise EspSequenceExhausted(
                f"SPI {self.spi:08x}: sequence number {seq} is the last one; rekey"
            )
        if not 0 <= next_header <= 255:
            raise EspError(f"next header {next_header} is not an octet")
        if not self.warm:
            self.warm_up()
        seq += 1
        self.seq = seq
        length = len(payload)
        # RFC 4303 §2.4: pad so that payload | padding | pad length | next header
        # fills whole cipher blocks (and 4-octet words); pad bytes are 1, 2, 3, ...
        trailer = _trailer(-(length + 2) % self._block, next_header)

        aesgcm = self._aesgcm
        if aesgcm is not None:
            # RFC 4106 §3.1: the explicit IV is our 64-bit counter (the sequence number).
            # Built in one go with the header, and the plaintext by one concatenation:
            # fewer objects per packet than a bytearray grown in place (bench/README.md).
            head = _HEADER_IV.pack(self.spi, seq, seq)
            sealed = aesgcm.encrypt(self._salt + head[8:], payload + trailer, head[:8])
            if self._icv_length != 16:
                # RFC 4106 §6: a shorter ICV is the full GCM tag truncated.
                sealed = sealed[: len(sealed) - 16 + self._icv_length]
            packet = head + sealed
        elif self._cbc is not None and self._hmac is not None and self._random_bytes is None:
            # The IV is the first output block (_CbcEncryptor): header, IV and
            # ciphertext in one concatenation; the ICV over all of it (RFC 4303 §3.3.2).
            packet = _HEADER.pack(self.spi, seq) + self._cbc.encrypt_with_iv(
                seq.to_bytes(self._block, "big") + payload + trailer)
            mac = self._hmac.copy()
            mac.update(packet)
            packet += mac.finalize()[: self._icv_length]
        elif self._cbc is not None:
            iv = self._iv(self._iv_length)
            if len(iv) != self._iv_length:
                raise EspError(f"random source gave {len(iv)} octets for a "
                               f"{self._iv_length}-octet IV")
            plaintext = bytearray(payload)
            plaintext += trailer
            ciphertext = self._cbc.encrypt(iv, plaintext)
            packet = _HEADER.pack(self.spi, seq) + iv + ciphertext
            packet += self._icv(packet)
        else:  # NULL encryption (RFC 2410): the plaintext goes as it is, with an ICV
            packet = _HEADER.pack(self.spi, seq) + payload + trailer
            packet += self._icv(packet)

        counters = self.counters
        counters.packets += 1
        counters.bytes += length
        return packet

    def _iv(self, length: int) -> bytes:
        """A CBC IV from the random source given to the constructor."""
        if self._random_bytes is None:  # pragma: no cover - seal takes the other branch
            raise EspError("no random source")
        return self._random_bytes(length)

    def _icv(self, data: bytes) -> bytes:
        if self._hmac is None:  # pragma: no cover - AEAD never gets here
            raise EspError("no integrity algorithm")
        mac = self._hmac.copy()
        mac.update(data)
        return mac.finalize()[: self._icv_length]


class InboundSa:
    """Opens packets for one inbound SA, in the order RFC 4303 §3.4 prescribes.

    Length checks, replay check (§3.4.3), ICV check before decryption (§3.4.4;
    combined in AES-GCM's decryption, RFC 4106 §5), decryption, padding check
    (§2.4), then the replay window update. Each refusal raises a typed EspError
    and is counted; nothing decrypted is returned from a packet that failed.
    """

    __slots__ = ("_aesgcm", "_block", "_cbc", "_enc_key", "_hmac", "_icv_length",
                 "_integ_key", "_iv_length", "_min_ciphertext", "_min_length", "_salt", "alg",
                 "counters", "idle_mark", "replay", "spi", "warm")

    def __init__(
        self,
        spi: int,
        alg: EspAlgorithm,
        keymat: bytes,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
    ) -> None:
        if not 0 < spi < 2**32:
            raise EspError(f"SPI {spi:#x} is not a non-zero 32-bit value")
        self.spi = spi
        self.alg = alg
        self.counters = EspCounters()
        self.replay = ReplayWindow(replay_window)
        enc_key, salt, integ_key = _split_keymat(alg, keymat)
        self._salt = salt
        self._block = alg.block_size
        self._iv_length = alg.iv_length
        self._icv_length = alg.icv_length
        self._integ_key = integ_key
        self._enc_key = enc_key
        self._hmac: hmac.HMAC | None = None
        self._cbc: _CbcDecryptor | None = None
        self._aesgcm: AESGCM | None = None
        self.warm = False
        """Whether the OpenSSL contexts exist; the first ``open`` of a packet with
        this SPI and a plausible length builds them."""
        self.idle_mark = -1
        """``counters.packets`` when the data plane last looked (see ``Sad.cool_idle``)."""
        # Smallest valid ciphertext: one block for CBC; pad length + next header otherwise.
        self._min_ciphertext = self._block if alg.cbc else 2
        self._min_length = ESP_HEADER_LENGTH + self._iv_length + self._min_ciphertext + (
            self._icv_length
        )

    def warm_up(self) -> None:
        """Build the OpenSSL contexts from the keys (the first packet after idle pays this)."""
        alg = self.alg
        self._hmac = _make_hmac(alg, self._integ_key)
        self._cbc = (
            _CbcDecryptor(_block_cipher(alg, self._enc_key), self._block)
            if alg.cbc
            else None
        )
        self._aesgcm = (
            AESGCM(self._enc_key) if alg.aead and alg.icv_length == 16 else None
        )
        self.warm = True

    def cool(self) -> None:
        """Let the contexts go; the keys, replay window and counters stay."""
        self._hmac = self._cbc = self._aesgcm = None
        self.warm = False

    def open(self, packet: bytes) -> tuple[int, bytes]:
        """(next header, payload) of an ESP packet for this SA; raises an EspError to drop it.

        A next header of 59 (``IPPROTO_NONE``) marks a dummy packet (RFC 4303 §2.6)
        that the caller must discard.
        """
        counters = self.counters
        length = len(packet)
        if length < self._min_length:
            counters.malformed += 1
            raise EspMalformedError(
                f"SPI {self.spi:08x}: {length}-octet packet, at least {self._min_length} needed"
            )
        spi, seq = _HEADER.unpack_from(packet)
        if spi != self.spi:
            counters.malformed += 1
            raise EspMalformedError(f"packet for SPI {spi:08x} given to SA {self.spi:08x}")
        ct_start = ESP_HEADER_LENGTH + self._iv_length
        ct_end = length - self._icv_length
        if not self.warm:
            self.warm_up()
        if self._cbc is not None and (ct_end - ct_start) % self._block:
            counters.malformed += 1
            raise EspMalformedError(
                f"SPI {self.spi:08x} seq {seq}: ciphertext of {ct_end - ct_start} octets "
                f"is not a multiple of the {self._block}-octet block"
            )
        replay = self.replay
        # Right of the window is new (the common case, asked without a call); anything
        # else the window decides (RFC 4303 §3.4.3).
        if seq <= replay.top and not replay.check(seq):
            counters.replayed += 1
            raise EspReplayError(f"SPI {self.spi:08x}: sequence number {seq} replayed or too old")

        start = 0  # where the plaintext begins in what was decrypted
        aesgcm = self._aesgcm
        if aesgcm is not None:
            # RFC 4106 §5: nonce = salt | explicit IV, AAD = SPI | seq; the tag is
            # verified before any plaintext is released.
            try:
                plaintext = aesgcm.decrypt(self._salt + packet[ESP_HEADER_LENGTH:ct_start],
                                           memoryview(packet)[ct_start:],
                                           packet[:ESP_HEADER_LENGTH])
            except InvalidTag:
                counters.failed_icv += 1
                raise EspIcvError(f"SPI {self.spi:08x} seq {seq}: ICV mismatch") from None
        elif self._hmac is None:
            plaintext = self._open_gcm(memoryview(packet), seq, ct_start)
        else:
            view = memoryview(packet)
            mac = self._hmac.copy()
            mac.update(view[:ct_end])
            icv = mac.finalize()[: self._icv_length]
            if not stdlib_hmac.compare_digest(icv, view[ct_end:]):
                counters.failed_icv += 1
                raise EspIcvError(f"SPI {self.spi:08x} seq {seq}: ICV mismatch")
            if self._cbc is not None:
                # The IV is one cipher block (RFC 3602 §3, RFC 2451 §3), just before
                # the ciphertext; its own output block is skipped by the slice below.
                plaintext = self._cbc.decrypt_with_iv(view[ESP_HEADER_LENGTH:ct_end])
                start = self._block
            else:
                plaintext = bytes(view[ct_start:ct_end])

        # RFC 4303 §2.4, §2.5: trailer, then the padding, which must be 1, 2, 3, ...
        pad_length = plaintext[-2]
        next_header = plaintext[-1]
        payload_end = len(plaintext) - 2 - pad_length
        if pad_length and (payload_end < start
                           or plaintext[payload_end:-2] != _PAD_BYTES[:pad_length]):
            counters.malformed += 1
            raise EspMalformedError(
                f"SPI {self.spi:08x} seq {seq}: bad padding (pad length {pad_length})"
            )
        replay.update(seq)
        counters.packets += 1
        counters.bytes += payload_end - start
        return next_header, plaintext[start:payload_end]

    def _open_gcm(self, view: memoryview, seq: int, ct_start: int) -> bytes:
        """AES-GCM with a truncated ICV (8 or 12 octets, RFC 4106 §6), which ``AESGCM``
        does not take: the ICV is verified first (RFC 4106 §5: AAD = SPI | seq)."""
        aad = view[:ESP_HEADER_LENGTH]
        nonce = self._salt + bytes(view[ESP_HEADER_LENGTH:ct_start])
        try:
            ct_end = len(view) - self._icv_length
            decryptor = Cipher(
                algorithms.AES(self._enc_key),
                modes.GCM(nonce, bytes(view[ct_end:]), min_tag_length=self._icv_length),
            ).decryptor()
            decryptor.authenticate_additional_data(aad)
            plaintext = decryptor.update(view[ct_start:ct_end])
            return plaintext + decryptor.finalize()
        except InvalidTag:
            self.counters.failed_icv += 1
            raise EspIcvError(f"SPI {self.spi:08x} seq {seq}: ICV mismatch") from None


def _make_hmac(alg: EspAlgorithm, key: bytes) -> hmac.HMAC | None:
    """A keyed HMAC context that is copied for each packet (the key schedule done once)."""
    if alg.mac is None:
        return None
    return hmac.HMAC(key, alg.mac.primitive())
