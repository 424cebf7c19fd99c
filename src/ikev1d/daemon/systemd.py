"""systemd's readiness protocol (sd_notify), written out: a datagram to $NOTIFY_SOCKET.

Under ``Type=notify`` systemd passes the path of a Unix datagram socket in
``NOTIFY_SOCKET`` and reads newline-separated ``KEY=VALUE`` assignments from
it: ``READY=1`` once the service is up, ``RELOADING=1`` then ``READY=1``
around a reload, ``STOPPING=1`` when it begins to shut down, ``STATUS=...``
for ``systemctl status``. A name starting with ``@`` is in the abstract
namespace (a leading NUL byte). Without the variable every call does nothing,
so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger("ikev1d.daemon")

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


class Notifier:
    """Sends states to the socket named in the environment when created.

    The variable is taken out of the environment, so that programs the daemon
    starts do not report to systemd in its name."""

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        name = env.pop(NOTIFY_SOCKET_ENV, "")
        self.address: str | None = None
        if name.startswith("@"):
            self.address = "\0" + name[1:]
        elif name.startswith("/"):
            self.address = name
        elif name:
            log.warning("%s=%r is not a Unix socket path; not notifying systemd",
                        NOTIFY_SOCKET_ENV, name)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False if not sent (logged)."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message)
        except OSError as exc:
            log.warning("cannot notify systemd (%s): %s", ", ".join(assignments),
                        exc.strerror or exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")
