"""A TCP echo server and client for the VM tests (run inside a namespace).

``python tcp_echo.py serve ADDR PORT`` answers one connection by echoing what it
reads until the client shuts its side down, then exits.
``python tcp_echo.py send ADDR PORT SRC SIZE`` connects from SRC, sends SIZE
pseudo-random octets, and exits 0 when exactly those come back.
"""

from __future__ import annotations

import hashlib
import socket
import sys


def serve(address: str, port: int) -> int:
    with socket.create_server((address, port)) as server:
        server.settimeout(60)
        sys.stdout.write("listening\n")
        sys.stdout.flush()
        conn, _peer = server.accept()
        with conn:
            conn.settimeout(60)
            while data := conn.recv(65536):
                conn.sendall(data)
    return 0


def payload(size: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return out[:size]


def send(address: str, port: int, source: str, size: int) -> int:
    data = payload(size)
    with socket.create_connection((address, port), timeout=60,
                                  source_address=(source, 0)) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    ok = received == data
    sys.stdout.write(f"sent {len(data)} received {len(received)} {'ok' if ok else 'MISMATCH'}\n")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "serve":
        return serve(argv[1], int(argv[2]))
    if len(argv) == 5 and argv[0] == "send":
        return send(argv[1], int(argv[2]), argv[3], int(argv[4]))
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
