"""The command line: ``padata-mp topology``.

Bad values exit with status 2 and one line on stderr, before any work starts.
"""

from __future__ import annotations

import argparse
import sys

from .topology import describe, parse_synthetic, read_topology


class UsageError(Exception):
    """A bad command line: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage and exits; we want one line
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="padata-mp", description="padata's multithreaded jobs on a process pool")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    topo = sub.add_parser("topology", help="print the NUMA nodes, CPUs and memory the engine will use")
    topo.add_argument("--sysfs", default="/sys", help="sysfs root to read (default /sys)")
    topo.add_argument("--synthetic", metavar="NxC", help="simulate N nodes of C CPUs over the host's CPUs")
    topo.add_argument("--workers", type=_positive_int, help="workers the engine would start")
    return parser


def cmd_topology(args: argparse.Namespace) -> int:
    host = read_topology(args.sysfs)
    topology = parse_synthetic(args.synthetic, host) if args.synthetic else host
    print(describe(topology, args.workers))
    return 0


COMMANDS = {"topology": cmd_topology}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (UsageError, ValueError) as exc:
        print(f"padata-mp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("padata-mp: interrupted", file=sys.stderr)
        return 130
