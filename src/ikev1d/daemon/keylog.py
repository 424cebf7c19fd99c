"""Key log files that let Wireshark decrypt a capture of our traffic.

``[daemon] keylog_dir`` names a directory; in it the daemon keeps two files in
the formats of Wireshark's own preference tables (UATs), so that the directory
can serve as (or be copied into) a Wireshark profile:

- ``ikev1_decryption_table`` (ISAKMP preferences, "IKEv1 Decryption Table"):
  one line per ISAKMP SA, ``ICOOKIE,KEY``: the initiator's cookie and the
  encryption key Ka (RFC 2409 Appendix B), both as bare hex. Wireshark computes
  the IVs itself from the Key Exchange payloads it saw (RFC 2409 Appendix B),
  so the capture must include the whole Main Mode.
- ``esp_sa`` (ESP preferences, "ESP SAs"): one line per direction of each IPsec
  SA, ``"IPv4","SRC","DST","0xSPI","ENCRYPTION","0xKEY","AUTHENTICATION","0xKEY"``,
  with Wireshark's names for the algorithms; for AES-GCM the encryption key
  includes the 4-octet salt (RFC 4106 section 8.1), as Wireshark expects.

The files list the SAs that exist now: each change rewrites a file completely
(a temporary file renamed over the old one, so a reader never sees half a
table). They are created 0600 and a directory we create 0700: whoever reads
them can decrypt the traffic.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ikev1d.dataplane.esp import EspAlgorithm, EspError, esp_algorithm, keymat_length
from ikev1d.engine.api import ChildSaDeleted, ChildSaEstablished, IkeSaDeleted, IkeSaEstablished
from ikev1d.errors import Ikev1dError

log = logging.getLogger("ikev1d.daemon")

IKEV1_TABLE = "ikev1_decryption_table"
ESP_TABLE = "esp_sa"

# The names Wireshark's ESP SA table gives the algorithms (4.0, as tested; the file
# stores the name, not a number), by our ESP names. tests/interop/test_esp_tshark.py
# checks each against tshark.
_WS_ENCRYPTION = {
    "aes-cbc": "AES-CBC [RFC3602]",
    "3des-cbc": "TripleDES-CBC [RFC2451]",
    "null": "NULL",
}
_WS_AES_GCM = "AES-GCM with {icv} octet ICV [RFC4106]"
_WS_AUTHENTICATION = {
    None: "NULL",
    "hmac-md5-96": "HMAC-MD5-96 [RFC2403]",
    "hmac-sha1-96": "HMAC-SHA-1-96 [RFC2404]",
    "hmac-sha256-128": "HMAC-SHA-256-128 [RFC4868]",
    "hmac-sha384-192": "HMAC-SHA-384-192 [RFC4868]",
    "hmac-sha512-256": "HMAC-SHA-512-256 [RFC4868]",
}


class KeyLogError(Ikev1dError):
    """The key log directory cannot be used."""


@dataclass(frozen=True)
class EspSaRow:
    """One direction of an IPsec SA in Wireshark's ESP SA table."""

    src: str
    dst: str
    spi: int
    encryption: str
    encryption_key: bytes
    authentication: str
    authentication_key: bytes

    def line(self) -> str:
        protocol = "IPv6" if ipaddress.ip_address(self.src).version == 6 else "IPv4"
        fields = (
            protocol, self.src, self.dst, f"0x{self.spi:08x}", self.encryption,
            "0x" + self.encryption_key.hex(), self.authentication,
            "0x" + self.authentication_key.hex() if self.authentication_key else "",
        )
        return ",".join(f'"{field}"' for field in fields)


def wireshark_names(alg: EspAlgorithm) -> tuple[str, str] | None:
    """(encryption, authentication) as Wireshark names them, or None if it has no name."""
    if alg.aead:
        if alg.encryption != "aes-gcm":
            return None
        encryption = _WS_AES_GCM.format(icv=alg.icv_length)
    else:
        name = _WS_ENCRYPTION.get(alg.encryption)
        if name is None:
            return None
        encryption = name
    authentication = _WS_AUTHENTICATION.get(alg.integrity)
    if authentication is None:
        return None
    return encryption, authentication


def esp_rows(event: ChildSaEstablished) -> tuple[EspSaRow, EspSaRow] | None:
    """The inbound and outbound rows of an IPsec SA, or None for an algorithm
    Wireshark cannot decrypt."""
    try:
        alg = esp_algorithm(event.encryption, event.key_length, event.integrity,
                            event.icv_length)
    except EspError:
        return None
    names = wireshark_names(alg)
    if names is None:
        return None
    encryption, authentication = names
    enc_end = alg.key_length + alg.salt_length
    need = keymat_length(alg)

    def row(src: str, dst: str, spi: int, keymat: bytes) -> EspSaRow:
        return EspSaRow(src, dst, spi, encryption, keymat[:enc_end], authentication,
                        keymat[enc_end:need])

    local, remote = event.local[0], event.remote[0]
    return (row(remote, local, event.spi_in, event.keymat_in),
            row(local, remote, event.spi_out, event.keymat_out))


class KeyLog:
    """The two files in one directory, kept in step with the SAs."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._ike: dict[int, tuple[bytes, bytes]] = {}
        self._esp: dict[int, tuple[EspSaRow, EspSaRow]] = {}
        self._failed = False

    def open(self) -> None:
        """Create the directory (0700) if needed and write both files empty, so no
        keys of an earlier run stay behind. Raises KeyLogError."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            mode = self.directory.stat().st_mode
        except OSError as exc:
            raise KeyLogError(f"keylog_dir {self.directory}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("keylog_dir %s is open to other users (mode %04o); the keys in it"
                        " decrypt the traffic", self.directory, stat.S_IMODE(mode))
        try:
            self._write(IKEV1_TABLE, ())
            self._write(ESP_TABLE, ())
        except OSError as exc:
            raise KeyLogError(f"keylog_dir {self.directory}: {exc.strerror}") from None

    # --- events ---

    def ike_established(self, event: IkeSaEstablished) -> None:
        if not event.cky_i or not event.encryption_key:
            return
        self._ike[event.ike_id] = (event.cky_i, event.encryption_key)
        self._update(IKEV1_TABLE)

    def ike_deleted(self, event: IkeSaDeleted) -> None:
        if self._ike.pop(event.ike_id, None) is not None:
            self._update(IKEV1_TABLE)

    def child_established(self, event: ChildSaEstablished) -> None:
        rows = esp_rows(event)
        if rows is None:
            log.info("key log: Wireshark cannot decrypt %s; IPsec SA %s left out",
                     event.proposal, event.child, extra={"conn": event.conn})
            return
        self._esp[event.child_id] = rows
        self._update(ESP_TABLE)

    def child_deleted(self, event: ChildSaDeleted) -> None:
        if self._esp.pop(event.child_id, None) is not None:
            self._update(ESP_TABLE)

    # --- files ---

    def lines(self, table: str) -> list[str]:
        if table == IKEV1_TABLE:
            return [f"{cky_i.hex()},{key.hex()}" for cky_i, key in self._ike.values()]
        return [row.line() for pair in self._esp.values() for row in pair]

    def _update(self, table: str) -> None:
        try:
            self._write(table, self.lines(table))
        except OSError as exc:
            # Logged once until a write succeeds again: a full disk must not flood the log.
            if not self._failed:
                log.error("cannot write key log %s: %s", self.directory / table, exc.strerror)
            self._failed = True
        else:
            if self._failed:
                log.info("key log %s written again", self.directory / table)
            self._failed = False

    def _write(self, table: str, lines: Iterable[str]) -> None:
        # mkstemp creates the file 0600; the rename replaces the old file in one step.
        fd, temp = tempfile.mkstemp(prefix=f".{table}.", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.writelines(line + "\n" for line in lines)
            os.replace(temp, self.directory / table)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
