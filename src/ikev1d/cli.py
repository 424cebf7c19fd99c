"""The `ikev1d` command line."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ikev1d", description="IKEv1 IPsec VPN gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run a complete example on this machine")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        print("ikev1d demo: nothing to show yet")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
