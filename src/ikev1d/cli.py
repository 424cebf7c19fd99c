"""The ``ikev1d`` command line: daemon, up, down, status, reload, check-config, demo.

Exit status: 0 success, 1 failure (reason on stderr), 2 bad usage, 130 interrupted.
User errors print one ``ikev1d: ...`` line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ikev1d.daemon.control import (
    DEFAULT_UP_TIMEOUT,
    ControlProtocolError,
    DownRequest,
    ReloadRequest,
    Request,
    Response,
    StatusRequest,
    UpRequest,
    decode_status,
    resolve_socket_path,
)
from ikev1d.levels import LEVELS

if TYPE_CHECKING:
    from ikev1d.status import ChildSaStatus, IkeSaStatus, Network, StatusDocument

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _ike_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISAKMP SA number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not an ISAKMP SA number: {text!r}")
    return value


def _log_level(text: str) -> str:
    level = text.lower()
    if level == "warn":
        level = "warning"
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(f"use one of: {', '.join(LEVELS)}")
    return level


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ikev1d", description="IKEv1 IPsec VPN gateway")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def control_socket(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--socket", metavar="PATH",
            help="control socket (default: $IKEV1D_SOCKET, else /run/ikev1d/ikev1d.sock)",
        )

    p = sub.add_parser("daemon", help="run the daemon in the foreground")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="configuration file")
    control_socket(p)
    p.add_argument("--log-file", metavar="PATH", help="also log to this file")
    p.add_argument("--log-level", type=_log_level, metavar="LEVEL",
                   help=f"one of {', '.join(LEVELS)} (default: [daemon] log_level, else info)")

    p = sub.add_parser("up", help="initiate a connection and wait until it is established")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--child", metavar="CHILD", help="only this child (default: all)")
    p.add_argument(
        "--timeout", type=_positive_seconds, default=DEFAULT_UP_TIMEOUT, metavar="SECONDS",
        help=f"give up after this long (default {DEFAULT_UP_TIMEOUT:g})",
    )
    control_socket(p)

    p = sub.add_parser("down", help="delete a connection's SAs (Delete payloads sent)")
    p.add_argument("name", metavar="NAME")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--peer", metavar="ID",
                       help="only the SAs with this peer (its ID, address or XAUTH user), "
                            "e.g. one road warrior of a %%any connection")
    which.add_argument("--ike-id", type=_ike_id, metavar="N",
                       help="only this ISAKMP SA (ike_id in status) and its IPsec SAs")
    control_socket(p)

    p = sub.add_parser("status", help="show the SAs")
    p.add_argument("--json", action="store_true", help="the status JSON document")
    control_socket(p)

    p = sub.add_parser("reload", help="reload the configuration file")
    control_socket(p)

    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("file", metavar="FILE")

    p = sub.add_parser("import-swanctl",
                       help="convert a strongSwan swanctl.conf to ikev1d's TOML (on stdout)")
    p.add_argument("file", metavar="FILE")

    # The demo has its own options (`ikev1d demo --help`); main() passes them through.
    sub.add_parser("demo", help="run a complete example on this machine", add_help=False)
    return parser


def _error(message: str) -> int:
    print(f"ikev1d: {message}", file=sys.stderr)
    return EXIT_FAILURE


# --- commands ----------------------------------------------------------------------


def _request(socket_option: str | None, request: Request, show_progress: bool = False) -> Response:
    from ikev1d.daemon.control_client import send_request

    def progress(text: str) -> None:
        print(text, flush=True)

    return send_request(
        resolve_socket_path(socket_option), request, progress if show_progress else None
    )


def _simple(socket_option: str | None, request: Request, show_progress: bool = False) -> int:
    response = _request(socket_option, request, show_progress)
    if not response.ok:
        return _error(response.message)
    if response.message:
        print(response.message)
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace) -> int:
    from ikev1d.daemon.runtime import DaemonError, DaemonOptions, run_daemon
    from ikev1d.logsetup import LogSetupError, setup_logging

    try:
        setup_logging(args.log_level or "info", args.log_file)
    except LogSetupError as exc:
        return _error(str(exc))
    options = DaemonOptions(
        config_path=args.config,
        socket_path=resolve_socket_path(args.socket),
        log_level=args.log_level,
    )
    try:
        return run_daemon(options)
    except DaemonError as exc:
        import logging

        logging.getLogger("ikev1d.daemon").error("cannot start: %s", exc)
        return EXIT_FAILURE


def cmd_status(args: argparse.Namespace) -> int:
    response = _request(args.socket, StatusRequest())
    if not response.ok:
        return _error(response.message)
    document = decode_status(response)
    if args.json:
        print(json.dumps(document.to_json(), indent=2))
    else:
        print(format_status(document), end="")
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from ikev1d.config import ConfigError, config_warnings, load_config

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    warnings = config_warnings(config)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    count = len(config.connections)
    print(
        f"{args.file}: OK ({count} connection{'s' if count != 1 else ''}"
        f", {len(warnings)} warning{'s' if len(warnings) != 1 else ''})"
    )
    return EXIT_OK


def cmd_import_swanctl(args: argparse.Namespace) -> int:
    """The TOML on stdout, one line per dropped option on stderr; exit 0 when
    something was converted and the result loads."""
    from ikev1d.config import ConfigError, parse_config
    from ikev1d.swanctl import SettingsError
    from ikev1d.swanctl.files import import_swanctl_file

    try:
        conversion = import_swanctl_file(args.file)
    except SettingsError as exc:
        return _error(f"{exc}")
    except OSError as exc:
        return _error(f"cannot read {args.file}: {exc.strerror or exc}")
    for note in conversion.notes:
        print(note, file=sys.stderr)
    if not conversion.converted:
        return _error(f"{args.file}: nothing to convert (no IKEv1 connection, IKE secret "
                      "or pool)")
    sys.stdout.write(conversion.toml)
    try:
        parse_config(conversion.toml, "<converted>")
    except ConfigError as exc:
        return _error(f"the converted configuration does not load: {exc}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, demo_args: list[str]) -> int:
    try:
        demo = importlib.import_module("ikev1d_lab.demo")
    except ModuleNotFoundError as exc:
        if exc.name != "ikev1d_lab.demo":
            raise
        return _error("the demo is not available in this build")
    result = demo.run_demo(demo_args)
    return result if isinstance(result, int) else EXIT_OK


def run(args: argparse.Namespace, demo_args: list[str] | None = None) -> int:
    match args.command:
        case "daemon":
            return cmd_daemon(args)
        case "up":
            return _simple(args.socket, UpRequest(args.name, args.child, args.timeout), True)
        case "down":
            return _simple(args.socket, DownRequest(args.name, args.peer, args.ike_id))
        case "status":
            return cmd_status(args)
        case "reload":
            return _simple(args.socket, ReloadRequest())
        case "check-config":
            return cmd_check_config(args)
        case "import-swanctl":
            return cmd_import_swanctl(args)
        case "demo":
            return cmd_demo(args, demo_args or [])
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    from ikev1d.daemon.control_client import DaemonUnreachable

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "demo":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return run(args, extra)
    except (DaemonUnreachable, ControlProtocolError) as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `ikev1d status | head`: the reader went away, which is not our error.
        return EXIT_OK


# --- the table for people ------------------------------------------------------------


def _seconds(total: int) -> str:
    if total < 120:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"
    return f"{minutes}m{secs:02d}s"


def _text(value: str | None) -> str:
    return value or "-"


def _networks(networks: tuple[Network, ...]) -> str:
    return ", ".join(str(n) for n in networks) or "-"


def format_status(document: StatusDocument) -> str:
    """The status document as a table for people, in the spirit of ``swanctl --list-sas``."""
    lines: list[str] = [] if document.ike_sas else ["no SAs"]
    for ike in document.ike_sas:
        lines += _ike_sa_lines(ike)
        for child in ike.children:
            lines += _child_sa_lines(child)
    if document.traps:
        lines.append(f"traps: {len(document.traps)}")
        for trap in document.traps:
            lines.append(f"  {_text(trap.name)}/{_text(trap.child)}: TRAPPED"
                         f" ({_text(trap.origin)}), {_text(trap.mode).upper()},"
                         f" {_networks(trap.local_ts)} === {_networks(trap.remote_ts)}")
    for pool in document.pools:
        lines.append(f"pool {_text(pool.name)}: {_text(pool.addrs)}, {pool.size} addresses,"
                     f" {pool.online} online, {pool.offline} offline")
    return "\n".join(lines) + "\n"


def _ike_sa_lines(ike: IkeSaStatus) -> list[str]:
    from ikev1d.status import endpoint_text  # loaded with the document it formats

    role = "initiator" if ike.initiator else "responder"
    cky_i, cky_r = ike.cookies
    nat_l = ", behind NAT" if ike.nat_local else ""
    nat_r = ", behind NAT" if ike.nat_remote else ""
    lines = [
        f"{_text(ike.name)}: {_text(ike.state)}, IKEv1, {role},"
        f" cookies {cky_i.hex()}:{cky_r.hex()}, ike-id {ike.ike_id}",
        f"  local  '{_text(ike.local_id)}' @ {endpoint_text(ike.local)}{nat_l}",
        f"  remote '{_text(ike.remote_id)}' @ {endpoint_text(ike.remote)}{nat_r}",
        f"  {_text(ike.proposal)}, auth {_text(ike.auth)}",
    ]
    timing = []
    if ike.established_s is not None:
        timing.append(f"established {_seconds(ike.established_s)} ago")
    if ike.rekey_in_s is not None:
        timing.append(f"rekeying in {_seconds(ike.rekey_in_s)}")
    if timing:
        lines.append("  " + ", ".join(timing))
    if ike.virtual_ip:
        extra = ""
        if ike.dns:
            extra += f", DNS {', '.join(_text(a) for a in ike.dns)}"
        if ike.split_include:
            extra += f", split {_networks(ike.split_include)}"
        vips = ", ".join(_text(a) for a in ike.virtual_ips or (ike.virtual_ip,))
        lines.append(f"  virtual IP{'s' if len(ike.virtual_ips) > 1 else ''} {vips}{extra}")
    if ike.remote_cert is not None:
        lines.append(f'  peer certificate "{ike.remote_cert}"')
    return lines


def _child_sa_lines(child: ChildSaStatus) -> list[str]:
    encap = ", UDP-encapsulated" if child.encap else ""
    counters = child.counters
    lines = [
        f"  {_text(child.name)}: {_text(child.state)},"
        f" {_text(child.mode).upper()}{encap}, {_text(child.proposal)}",
        f"    in  {child.spi_in:08x}, {counters.bytes_in:>12} bytes,"
        f" {counters.packets_in:>9} packets",
        f"    out {child.spi_out:08x}, {counters.bytes_out:>12} bytes,"
        f" {counters.packets_out:>9} packets",
        f"    local  {_networks(child.local_ts)}",
        f"    remote {_networks(child.remote_ts)}",
    ]
    timing = []
    if child.rekey_in_s is not None:
        timing.append(f"rekeying in {_seconds(child.rekey_in_s)}")
    timing.append(f"expires in {_seconds(child.expires_in_s)}")
    lines.append("    " + ", ".join(timing))
    return lines


if __name__ == "__main__":
    sys.exit(main())
