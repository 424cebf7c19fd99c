"""Scripts run when an IPsec SA comes up or goes down (a child's ``updown``).

The interface is the one of strongSwan's updown plugin (itself pluto's
``_updown`` interface, version 1.1), so that firewall scripts written for
strongSwan keep working: the script gets no arguments but those configured,
and ``PLUTO_*`` environment variables, once per pair of local and remote
traffic selector. ikev1d sets those it can fill truthfully and leaves out the
rest, as strongSwan does for features not in use (virtual IPs, XAUTH, marks,
XFRM interfaces, DNS): see docs/configuration.md for the list.

Scripts run asynchronously: the daemon never waits for one. At most
``MAX_CONCURRENT`` run at a time; one that runs longer than ``TIMEOUT_S`` is
killed (with its process group). The "down" of an IPsec SA runs after its
"up" has finished, so a script can undo what it did; it gets the environment
the "up" got, with the verb changed. Renewing an IPsec SA runs no script, as
in strongSwan: "up" runs for the first SA of a tunnel, "down" when the last
one is deleted. A failure is logged, with the script's output, and changes
nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
import signal
import socket
import struct
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from ikev1d.engine.api import (
    ChildSaDeleted,
    ChildSaEstablished,
    IkeSaDeleted,
    IkeSaEstablished,
    Network,
)

log = logging.getLogger("ikev1d.daemon")

TIMEOUT_S = 30.0
MAX_CONCURRENT = 4
MAX_OUTPUT = 16 * 1024
"""Octets of a script's output kept for the log; the rest is read and dropped."""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_SIOCGIFADDR = 0x8915


def interface_of(address: str) -> str | None:
    """The name of the interface that holds ``address``, or None."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.version == 6:
        return _interface_of_v6(ip.packed.hex())
    try:
        names = [name for _index, name in socket.if_nameindex()]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return None
    with sock:
        for name in names:
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue
            if answer[20:24] == ip.packed:
                return name
    # An address the ioctl does not report (a secondary one): no name rather than a guess.
    return None


def _interface_of_v6(hex_address: str) -> str | None:
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 6 and fields[0] == hex_address:
                    return fields[5]
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class IkeIdentities:
    local_id: str
    remote_id: str


def updown_environments(
    event: ChildSaEstablished,
    identities: IkeIdentities | None,
    interface: str | None,
    path: str = DEFAULT_PATH,
) -> list[dict[str, str]]:
    """The "up" environment for each (local, remote) traffic selector pair, as
    strongSwan's updown plugin sets it; "down" differs only in PLUTO_VERB."""
    me, peer = event.local[0], event.remote[0]
    environments = []
    for local_ts in event.local_ts:
        for remote_ts in event.remote_ts:
            env = {
                "PATH": path,
                "PLUTO_VERSION": "1.1",
                "PLUTO_VERB": "up-" + _verb_suffix(local_ts, me),
                # strongSwan passes the child's name here (the name of its CHILD_SA
                # config); the connection's name comes in IKEV1D_CONNECTION.
                "PLUTO_CONNECTION": event.child,
                "PLUTO_INTERFACE": interface or "unknown",
                "PLUTO_PROTO": "esp",
                "PLUTO_UNIQUEID": str(event.ike_id),
                "PLUTO_ME": me,
                "PLUTO_MY_CLIENT": str(local_ts),
                # Our traffic selectors are whole networks: any protocol, any port.
                "PLUTO_MY_PORT": "0",
                "PLUTO_MY_PROTOCOL": "0",
                "PLUTO_PEER": peer,
                "PLUTO_PEER_CLIENT": str(remote_ts),
                "PLUTO_PEER_PORT": "0",
                "PLUTO_PEER_PROTOCOL": "0",
                "IKEV1D_CONNECTION": event.conn,
            }
            if identities is not None:
                env["PLUTO_MY_ID"] = identities.local_id
                env["PLUTO_PEER_ID"] = identities.remote_id
            if event.encap:
                # RFC 3948: ESP in UDP; strongSwan names the peer's port.
                env["PLUTO_UDP_ENC"] = str(event.remote[1])
            environments.append(env)
    return environments


def _verb_suffix(local_ts: Network, me: str) -> str:
    """``host`` when our side of the tunnel is just our own address, else ``client``;
    ``-v6`` for IPv6, as in pluto's _updown interface."""
    try:
        me_ip = ipaddress.ip_address(me)
    except ValueError:
        me_ip = None
    is_host = local_ts.num_addresses == 1 and local_ts.network_address == me_ip
    v6 = (me_ip.version == 6) if is_host and me_ip is not None else local_ts.version == 6
    return ("host" if is_host else "client") + ("-v6" if v6 else "")


TunnelKey = tuple[str, str, str, tuple[Network, ...], tuple[Network, ...]]


@dataclass
class _Tunnel:
    """The IPsec SAs of one child between the same networks and peer: a renewed SA
    (RFC 2409 section 5.5, a new Quick Mode before the old one expires) joins the
    tunnel instead of running "up" again, and "down" runs when the last SA goes,
    as strongSwan runs no updown for a rekeying."""

    argv: tuple[str, ...]
    environments: list[dict[str, str]]
    child_ids: set[int]
    last: asyncio.Task[None]


class UpdownRunner:
    """Runs the configured scripts for IPsec SA events, never blocking the caller."""

    def __init__(
        self,
        *,
        timeout_s: float = TIMEOUT_S,
        max_concurrent: int = MAX_CONCURRENT,
        find_interface: Callable[[str], str | None] = interface_of,
    ) -> None:
        self.timeout_s = timeout_s
        self._find_interface = find_interface
        self._slots = asyncio.Semaphore(max_concurrent)
        self._identities: dict[int, IkeIdentities] = {}
        self._tunnels: dict[TunnelKey, _Tunnel] = {}
        self._tunnel_of: dict[int, TunnelKey] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def ike_established(self, event: IkeSaEstablished) -> None:
        self._identities[event.ike_id] = IkeIdentities(event.local_id, event.remote_id)

    def ike_deleted(self, event: IkeSaDeleted) -> None:
        self._identities.pop(event.ike_id, None)

    def child_up(self, event: ChildSaEstablished, argv: Sequence[str]) -> None:
        if not argv:
            return
        key: TunnelKey = (event.conn, event.child, event.remote[0], event.local_ts,
                          event.remote_ts)
        self._tunnel_of[event.child_id] = key
        tunnel = self._tunnels.get(key)
        if tunnel is not None:
            tunnel.child_ids.add(event.child_id)
            log.debug("updown: %s renewed, no script run", event.child,
                      extra={"conn": event.conn})
            return
        environments = updown_environments(
            event, self._identities.get(event.ike_id), self._find_interface(event.local[0]),
            os.environ.get("PATH") or DEFAULT_PATH,
        )
        task = self._start(self._run_all(tuple(argv), environments, f"{event.child} up",
                                         event.conn, None))
        self._tunnels[key] = _Tunnel(tuple(argv), environments, {event.child_id}, task)

    def child_down(self, event: ChildSaDeleted) -> None:
        key = self._tunnel_of.pop(event.child_id, None)
        tunnel = self._tunnels.get(key) if key is not None else None
        if key is None or tunnel is None:
            return  # no script, or its SA never came up
        tunnel.child_ids.discard(event.child_id)
        if tunnel.child_ids:
            return  # a renewed SA carries the tunnel on
        del self._tunnels[key]
        environments = [
            {**env, "PLUTO_VERB": "down-" + env["PLUTO_VERB"].removeprefix("up-")}
            for env in tunnel.environments
        ]
        self._start(self._run_all(tunnel.argv, environments, f"{event.child} down",
                                  event.conn, tunnel.last))

    async def drain(self) -> None:
        """Wait for every script started so far (each is bounded by the timeout)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run_all(
        self,
        argv: tuple[str, ...],
        environments: list[dict[str, str]],
        what: str,
        conn: str,
        after: asyncio.Task[None] | None,
    ) -> None:
        if after is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(after)
        for env in environments:
            try:
                await self._run(argv, env, what, conn)
            except Exception:
                log.exception("updown %s: internal error", what, extra={"conn": conn})

    async def _run(self, argv: tuple[str, ...], env: dict[str, str], what: str,
                   conn: str) -> None:
        extra = {"conn": conn}
        async with self._slots:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                log.error("updown %s: cannot run %s: %s", what, argv[0], exc.strerror,
                          extra=extra)
                return
            try:
                output = await asyncio.wait_for(_collect(proc), self.timeout_s)
            except TimeoutError:
                _kill_group(proc.pid)
                await proc.wait()
                log.error("updown %s: %s killed after %gs", what, argv[0], self.timeout_s,
                          extra=extra)
                return
        text = output.decode(errors="replace")
        for line in text.splitlines():
            log.info("updown: %s", line, extra=extra)
        if proc.returncode != 0:
            log.error("updown %s: %s %s", what, argv[0], _exit_text(proc.returncode),
                      extra=extra)
        else:
            log.debug("updown %s: %s done", what, argv[0], extra=extra)


async def _collect(proc: asyncio.subprocess.Process) -> bytes:
    data = bytearray()
    if proc.stdout is not None:
        while chunk := await proc.stdout.read(65536):
            if len(data) < MAX_OUTPUT:
                data += chunk[: MAX_OUTPUT - len(data)]
    await proc.wait()
    return bytes(data)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "did not finish"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"
