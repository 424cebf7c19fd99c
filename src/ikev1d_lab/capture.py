"""Packet capture inside a namespace (dumpcap) and dissection with tshark.

tshark's ISAKMP/ESP dissectors are a decoder nobody on this project wrote, so
tests check our wire format against them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ikev1d_lab.errors import LabError
from ikev1d_lab.netns import Namespace

__all__ = [
    "Capture",
    "CaptureError",
    "isakmp_decryption_table",
    "resent_frames",
    "tshark_available",
    "tshark_json",
    "uat_option",
]

DUMPCAP = "dumpcap"
_PACKETS_RE = re.compile(r"Packets(?: captured)?: (\d+)")
TSHARK = "tshark"


class CaptureError(LabError):
    """dumpcap or tshark failed."""


def _load_factor() -> float:
    """How much longer to wait for dumpcap than on an idle machine: the runnable
    processes per core (1 to 4). Both ends of a capture depend on dumpcap being
    scheduled: an empty capture of a whole handshake was seen at load 8 on 2 cores."""
    per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
    return max(1.0, min(per_core, 4.0))


def tshark_available() -> tuple[bool, str]:
    """Whether dumpcap and tshark are installed; (ok, reason)."""
    for tool in (DUMPCAP, TSHARK):
        if shutil.which(tool) is None:
            return False, f"{tool} not found (apt-get install tshark)"
    return True, ""


class Capture:
    """dumpcap on `ifname` inside `ns`, writing `path`; capturing when the constructor returns.

    ``pcapng=False`` writes classic pcap (``dumpcap -P``).  `capture_filter`
    is a BPF filter such as ``"udp port 500 or udp port 4500"``.
    """

    def __init__(
        self,
        ns: Namespace,
        ifname: str,
        path: Path | str,
        capture_filter: str | None = None,
        pcapng: bool = False,
        start_timeout: float = 10.0,
        warmup: float = 0.2,
    ) -> None:
        self.ns = ns
        self.ifname = ifname
        self.path = Path(path).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [DUMPCAP, "-i", ifname, "-w", str(self.path)]
        if not pcapng:
            cmd.append("-P")
        if capture_filter:
            cmd += ["-f", capture_filter]
        self._stderr: list[str] = []
        self._packets = 0
        self._ready = threading.Event()
        self.proc: subprocess.Popen[str] = ns.popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + start_timeout
        while not self._ready.wait(0.02):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise CaptureError(
                    f"dumpcap on {ns.name}/{ifname} did not start: {''.join(self._stderr)}"
                )
        # dumpcap reports "Capturing on" a few milliseconds before packets really reach
        # it (measured here: 7 of 15 packets sent at once were lost, none after 50 ms).
        time.sleep(warmup * _load_factor())

    def _read_stderr(self) -> None:
        stream = self.proc.stderr
        if stream is None:
            return
        # dumpcap updates its packet count as "\rPackets: N" without a newline, so read
        # whatever arrives instead of lines.
        fd = stream.fileno()
        while chunk := os.read(fd, 4096):
            self._stderr.append(chunk.decode(errors="replace"))
            if "Capturing on" in self.stderr:
                self._ready.set()
            if (m := _PACKETS_RE.findall(self.stderr)) != []:
                self._packets = int(m[-1])

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    @property
    def packets_captured(self) -> int:
        """Packet count dumpcap reported when it stopped (0 while running)."""
        return self._packets

    def stop(self, settle: float = 0.5, grace: float = 5.0) -> Path:
        """Stop dumpcap and return the file path.

        dumpcap takes packets from the kernel's ring buffer in blocks that are
        handed over only after a timeout (~250 ms); packets still in an open
        block are lost on SIGTERM.  So wait `settle` seconds first (longer on a
        loaded machine, where dumpcap may not run within them).
        """
        if self.proc.poll() is None:
            time.sleep(settle * _load_factor())
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(grace)
        self._reader.join(1.0)
        return self.path

    def __enter__(self) -> Capture:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def uat_option(
    table: str, rows: Sequence[Sequence[str]], bare: Collection[int] = ()
) -> list[str]:
    """``-o uat:TABLE:row`` options for tshark.

    UAT string and enum fields are written in double quotes, hex-bytes fields
    bare: list the indices of the bare (hex) fields in `bare`.
    """
    opts: list[str] = []
    for row in rows:
        fields = ",".join(f if i in bare else f'"{f}"' for i, f in enumerate(row))
        opts += ["-o", f"uat:{table}:{fields}"]
    return opts


def isakmp_decryption_table(entries: Mapping[str, str]) -> list[str]:
    """tshark options that decrypt IKEv1: initiator cookie (hex) -> encryption key Ka (hex)."""
    rows = [(ck, key) for ck, key in entries.items()]
    return uat_option("ikev1_decryption_table", rows, bare=(0, 1))


def tshark_json(
    pcap: Path | str,
    extra_args: Sequence[str] = (),
    display_filter: str | None = None,
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """Dissect `pcap` with ``tshark -T json --no-duplicate-keys``; the parsed packet list.

    A field that occurs more than once in one object (e.g. ``isakmp.typepayload``
    for each payload) is a list; a field that occurs once is a plain value.

    `extra_args` go before ``-T json``: e.g. ``-o`` preferences (ISAKMP
    decryption table, ESP SA table) or ``-x`` / ``-J isakmp``.
    """
    cmd = [TSHARK, "-n", "-r", str(pcap), *extra_args]
    if display_filter:
        cmd += ["-Y", display_filter]
    # tshark repeats keys for repeated fields (several payloads of one type); json.loads
    # would keep only the last, so have them merged into arrays.
    cmd += ["-T", "json"]
    if "--no-duplicate-keys" not in extra_args:
        cmd.append("--no-duplicate-keys")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise CaptureError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    if not proc.stdout.strip():
        return []
    packets: list[dict[str, Any]] = json.loads(proc.stdout)
    return packets


LINKTYPE_RAW = 101
"""pcap link type: raw IPv4/IPv6 packets, no link-layer header."""


def write_raw_pcap(path: Path, packets: Sequence[bytes]) -> Path:
    """A classic pcap file of raw IP packets, one microsecond apart, for tshark to
    judge what we built (checksums, sequence numbers, ESP) without a network."""
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for i, packet in enumerate(packets):
            f.write(struct.pack("<IIII", 1_700_000_000, i, len(packet), len(packet)) + packet)
    return path


def resent_frames(pcap: Path) -> set[str]:
    """Frame numbers of UDP datagrams whose payload an earlier frame carried already.

    A message sent again is the same octets (RFC 2408 section 5.1), but tshark decrypts
    an encrypted IKEv1 copy with the IV that follows the copy before it, so the copy's
    first block comes out garbled and tshark calls it malformed; its first sending is
    the one to judge."""
    seen: set[str] = set()
    again: set[str] = set()
    for row in tshark_fields(pcap, ["frame.number", "udp.payload"]):
        if row["udp.payload"] and row["udp.payload"] in seen:
            again.add(row["frame.number"])
        seen.add(row["udp.payload"])
    return again


def tshark_fields(pcap: Path, fields: Sequence[str], preferences: Sequence[str] = (),
                  timeout: float = 120.0) -> list[dict[str, str]]:
    """One dict per packet with the first occurrence of each of `fields` ("" when
    absent), from ``tshark -T fields``; `preferences` are ``-o`` settings. tshark
    runs with its home in the pcap's directory, so no user profile changes what
    it reports."""
    cmd = [TSHARK, "-n", "-r", str(pcap)]
    for preference in preferences:
        cmd += ["-o", preference]
    cmd += ["-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]
    for field in fields:
        cmd += ["-e", field]
    home = str(pcap.parent)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout,
                          env={**os.environ, "HOME": home, "XDG_CONFIG_HOME": home})
    if proc.returncode != 0:
        raise CaptureError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return [dict(zip(fields, line.split("|"), strict=True))
            for line in proc.stdout.splitlines() if line]
