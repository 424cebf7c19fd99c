"""Other implementations' ISAKMP messages from public captures, through our decoder.

The captures themselves are not part of the repository. Point
``IKEV1D_PUBLIC_CAPTURES`` at a directory of pcap/pcapng files (for instance
OISF/suricata-verify ``tests/ikev1-rules/ikev1-isakmp-main-mode.pcap``,
the-tcpdump-group/tcpdump ``tests/ISAKMP_sa_setup.pcap`` and
``tests/isakmp4500.pcap``, arkime/arkime ``tests/pcap/IKEv1.pcap``); without it
the test is skipped. Captures made to crash dissectors (tcpdump's ``*-oobr``,
``*-segfault``) go in a ``malformed/`` subdirectory: there a message may be
refused, but only with a WireError, as the engine would answer it.

Each UDP datagram to or from port 500, and each one on 4500 that starts with
the non-ESP marker (RFC 3948 section 2.2), is taken as an ISAKMP message:

- an IKEv1 message (major version 1) decodes; an encrypted one as header plus
  opaque body (its payloads need the keys), a plaintext one payload by
  payload, and the plaintext one re-encodes byte for byte;
- a message of another major version (IKEv2) is refused with
  INVALID-MAJOR-VERSION, as RFC 2408 section 5.2 asks, and counted apart.

The figures are printed (``pytest -s``) so that a run can be reported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ikev1d.wire import (
    NON_ESP_MARKER,
    InvalidVersionError,
    NotifyType,
    WireError,
    decode_message,
    split_message,
)

CAPTURES_ENV = "IKEV1D_PUBLIC_CAPTURES"
MALFORMED_DIR = "malformed"
SUFFIXES = (".pcap", ".pcapng", ".cap")


@dataclass
class Tally:
    files: int = 0
    messages: int = 0
    plaintext: int = 0
    reencoded: int = 0
    encrypted: int = 0
    other_version: int = 0
    refused: int = 0
    problems: list[str] = field(default_factory=list)


def _captures(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES)


def _isakmp_datagrams(pcap: Path) -> list[tuple[str, bytes]]:
    """(frame number, ISAKMP message) for every UDP datagram on ports 500/4500.

    tshark only takes the capture apart (link layers, IPv4/IPv6, reassembly);
    the ISAKMP bytes are judged by our decoder alone.
    """
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed")
    proc = subprocess.run(
        [tshark, "-n", "-r", str(pcap), "-Y", "udp.port == 500 || udp.port == 4500",
         "-T", "fields", "-E", "separator=|", "-e", "frame.number", "-e", "udp.srcport",
         "-e", "udp.dstport", "-e", "udp.payload"],
        capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, "HOME": str(pcap.parent), "XDG_CONFIG_HOME": str(pcap.parent)},
    )
    if proc.returncode != 0:
        raise AssertionError(f"tshark could not read {pcap}: {proc.stderr.strip()}")
    out: list[tuple[str, bytes]] = []
    for line in proc.stdout.splitlines():
        frame, sport, dport, payload = line.split("|")
        data = bytes.fromhex(payload.replace(":", ""))
        if "4500" in (sport, dport) and "500" not in (sport, dport):
            if data[:4] != NON_ESP_MARKER:
                continue  # ESP in UDP (RFC 3948), or a NAT-keepalive octet
            data = data[4:]
        out.append((frame, data))
    return out


def _judge(name: str, frame: str, data: bytes, malformed: bool, tally: Tally) -> None:
    where = f"{name} frame {frame}"
    tally.messages += 1
    try:
        header, _body = split_message(data)
        if header.encrypted:
            tally.encrypted += 1
            return
        message = decode_message(data)
    except InvalidVersionError as exc:
        tally.other_version += 1
        if exc.notify != NotifyType.INVALID_MAJOR_VERSION:
            tally.problems.append(f"{where}: {exc} answered with {exc.notify}")
        return
    except WireError as exc:
        tally.refused += 1
        if not malformed:
            tally.problems.append(f"{where}: {type(exc).__name__}: {exc}")
        return
    except Exception as exc:  # anything else escaping is the defect looked for
        tally.problems.append(f"{where}: {type(exc).__name__} escaped the decoder: {exc}")
        return
    tally.plaintext += 1
    # Bytes after the header's length are not part of the message (RFC 2408 section 3.1).
    if message.encode() == data[: header.length]:
        tally.reencoded += 1
    else:
        tally.problems.append(f"{where}: re-encoding differs from the bytes received")


def test_public_captures_decode() -> None:
    directory = os.environ.get(CAPTURES_ENV)
    if not directory:
        pytest.skip(f"{CAPTURES_ENV} is not set (a directory of public pcap files)")
    root = Path(directory)
    captures = _captures(root)
    if not captures:
        pytest.fail(f"{CAPTURES_ENV}={root} holds no {'/'.join(SUFFIXES)} files")
    tally = Tally()
    for pcap in captures:
        malformed = MALFORMED_DIR in pcap.relative_to(root).parts[:-1]
        datagrams = _isakmp_datagrams(pcap)
        tally.files += 1
        before = tally.messages
        for frame, data in datagrams:
            _judge(pcap.name, frame, data, malformed, tally)
        print(f"{pcap.relative_to(root)}: {tally.messages - before} ISAKMP messages")
    print(f"{tally.files} files, {tally.messages} messages: {tally.plaintext} plaintext "
          f"IKEv1 ({tally.reencoded} re-encoded byte-exact), {tally.encrypted} encrypted "
          f"IKEv1 (header + opaque body), {tally.other_version} of another major version, "
          f"{tally.refused} refused as malformed")
    assert not tally.problems, "\n".join(tally.problems)
    assert tally.messages, "no ISAKMP message in any capture"
