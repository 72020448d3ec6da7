"""The command line: ``padata-mp topology | init | bench | compare``.

Bad values exit with status 2 and one line on stderr, before any work starts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, NoReturn

import padata_mp

from .errors import BadTypeError, BadValueError, PadataError, ShmSpaceError
from .interrupts import deferred_interrupts

if TYPE_CHECKING:
    from .topology import Topology


class UsageError(Exception):
    """A bad command line: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints usage and exits; we want one line
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _size(text: str) -> int:
    from .mm import parse_size

    try:
        return parse_size(text)
    except (BadValueError, BadTypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _nodes(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _thread_list(text: str) -> list[int]:
    return [_positive_int(part) for part in text.split(",")]


def _output(path: str) -> str:
    """An output path, checked writable now so a long run does not fail at its end."""
    if path == "-":
        return path
    target = os.path.abspath(path)
    parent = os.path.dirname(target)
    if os.path.isdir(target):
        raise argparse.ArgumentTypeError(f"cannot write {path!r}: it is a folder; name a file")
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {path!r}: its folder is missing or not writable")
    existed = os.path.exists(target)
    try:  # the one sure test, where root passes every access() check (a /proc file, say)
        with open(target, "a"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write {path!r}: {exc.strerror}") from None
    if not existed:
        os.unlink(target)
    return path


def _topology(args: argparse.Namespace) -> Topology:
    from .topology import parse_synthetic, read_topology

    host = read_topology(getattr(args, "sysfs", "/sys"))
    return parse_synthetic(args.synthetic, host) if args.synthetic else host


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, like 5, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _kinds(text: str) -> tuple[str, ...]:
    from .bench.results import KINDS

    kinds = KINDS if text == "all" else tuple(k.strip() for k in text.split(","))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"expected 'all' or a list of {', '.join(KINDS)}, got {text!r}")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    from .bench.workloads import JOBS
    from .mm.kernels import KERNELS

    parser = _Parser(prog="padata-mp", description="padata's multithreaded jobs on a process pool")
    parser.add_argument("--version", action="version", version=f"padata-mp {padata_mp.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    topo = sub.add_parser("topology", help="print the NUMA nodes, CPUs and memory the engine will use")
    topo.add_argument("--sysfs", default="/sys", help="sysfs root to read (default /sys)")
    topo.add_argument("--synthetic", metavar="NxC", help="simulate N nodes of C CPUs over the host's CPUs")
    topo.add_argument("--workers", type=_positive_int, help="workers the engine would start")

    init = sub.add_parser("init", help="create a simulated machine and run deferred struct-page init")
    init.add_argument(
        "--mem", type=_size, default="8G", help="simulated memory, like 512M, 64G, 1T (default 8G)"
    )
    init.add_argument("--nodes", type=_nodes, default=1, help="simulated nodes, or auto (default 1)")
    init.add_argument("--threads", type=_positive_int, help="max_threads per node (default: the node's CPUs)")
    init.add_argument("--synthetic", metavar="NxC", help="run the engine on N simulated nodes of C CPUs")
    init.add_argument("--verify", action="store_true", help="prove the result afterwards")
    init.add_argument(
        "--kernel",
        choices=("auto", *KERNELS),
        default="auto",
        help="the chunk kernel (default auto: the fastest here, c-stream where a C compiler is, else "
        "numpy; c and c-stream, its non-temporal stores, need a C compiler)",
    )

    bench = sub.add_parser("bench", help="measure a kernel job's scaling, ceiling, native and peers")
    bench.add_argument(
        "--job",
        choices=list(JOBS),
        default="init",
        help="the job: "
        + "; ".join(f"{name}: {j.description}" for name, j in JOBS.items())
        + " (default init)",
    )
    bench.add_argument(
        "--kernel",
        choices=KERNELS,
        help="measure the engine with this chunk kernel only (default: every kernel the job has; "
        "init and pmem have numpy, c and c-stream, the C ones where a C compiler is found)",
    )
    bench.add_argument(
        "--mem",
        type=_size,
        help="simulated memory (default 64G: a 1 GiB memmap); the device's size for pmem, "
        "the file's for fallocate (default 2G)",
    )
    bench.add_argument("--nodes", type=_nodes, default="auto", help="simulated nodes, or auto (default)")
    counts = bench.add_mutually_exclusive_group()
    counts.add_argument("--threads", type=_thread_list, help="thread counts per node, like 1,2,4")
    counts.add_argument(
        "--node-percent",
        action="store_true",
        help="the kernel series: 1 thread, then 12..100%% of a node's CPUs (default)",
    )
    bench.add_argument("--repeat", type=_positive_int, default=5, help="runs per configuration (default 5)")
    bench.add_argument(
        "--json", type=_output, metavar="F", help="write everything measured as JSON (- : standard output)"
    )
    bench.add_argument(
        "--csv", type=_output, metavar="F", help="write every row (engine, native, peers) as CSV"
    )
    bench.add_argument(
        "--plot", type=_output, metavar="F.png", help="plot speedup and GB/s (needs matplotlib)"
    )
    bench.add_argument(
        "--peers", action="store_true", help="also run Pool.map, ProcessPoolExecutor, threads, joblib"
    )
    bench.add_argument(
        "--native",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the C reference (default on)",
    )
    bench.add_argument("--synthetic", metavar="NxC", help="run the engine on N simulated nodes of C CPUs")

    comp = sub.add_parser("compare", help="compare two bench --json results, configuration by configuration")
    comp.add_argument("a", metavar="A.json", help="the baseline")
    comp.add_argument("b", metavar="B.json", help="the result compared with it")
    comp.add_argument(
        "--fail-above",
        type=_percent,
        metavar="PCT",
        help="exit 1 when a gated configuration is slower in B by more than PCT percent: the whole "
        "95%% interval of B / A above 1 + PCT/100",
    )
    comp.add_argument(
        "--strict",
        action="store_true",
        help="with --fail-above, exit 3 when a gated configuration is inconclusive (its interval "
        "straddles the threshold) and none is slower",
    )
    comp.add_argument(
        "--rows",
        type=_kinds,
        default=("padata_mp",),
        metavar="KINDS",
        help="the rows --fail-above judges: 'all', or a list of plain, padata_mp, native, peer "
        "(default: padata_mp, the engine's)",
    )
    return parser


def cmd_topology(args: argparse.Namespace) -> int:
    from .topology import describe

    print(describe(_topology(args), args.workers))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from .mm import Machine, deferred_init
    from .pool import Padata

    topology = _topology(args)
    began = time.perf_counter()
    shown = (
        (lambda what: status(f"creating a {args.mem / 2**30:g} GiB machine: {what}"))
        if sys.stderr.isatty()
        else None
    )
    # The machine first: its checks (nodes, room in /dev/shm) come before any process starts.
    with (
        Machine.create(args.mem, args.nodes, topology=topology, on_progress=shown) as machine,
        Padata(topology=topology) as engine,
    ):
        created = time.perf_counter() - began
        status("attaching the workers")
        done = (lambda fraction: status(f"deferred init {fraction:.0%}")) if sys.stderr.isatty() else None
        result = deferred_init(machine, engine, args.threads, done, args.kernel)
        status("")
        print(machine.describe())
        print(
            f"chunk kernel: {result.kernel}; the workers mapped the machine in {result.attach_ms:.1f} ms, "
            "before the job"
        )
        for node, ms in sorted(result.node_ms.items()):
            print(f"node {node} deferred pages initialised in {round(ms)}ms")
        rate = result.pages / (result.elapsed_ms / 1e3) if result.elapsed_ms else 0.0
        print(
            f"{result.pages} pages in {result.elapsed_ms:.1f} ms: {rate / 1e6:.1f} Mpages/s, "
            f"{rate * 64 / 1e9:.2f} GB/s of struct pages (machine created in {created:.2f} s)"
        )
        for node, (host, fraction) in machine.placement().items():
            where = (
                "not checked: move_pages unavailable"
                if fraction is None
                else f"{fraction:.0%} of sampled pages there"
            )
            print(f"node {node} struct pages on host node {host} ({where})")
        if args.verify:
            summary = machine.verify()
            print(f"verified: {summary.free_pages} pages free, {summary.deferred_pages} deferred")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import report, runner

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'padata_mp[plot]'") from None
    topology = _topology(args)
    node_cpus = min(len(n.cpus) for n in topology.nodes_with_cpus)
    threads = args.threads
    if threads and max(threads) > node_cpus:
        print(f"padata-mp: note: thread counts capped at the node's {node_cpus} CPUs", file=sys.stderr)
        threads = sorted({min(t, node_cpus) for t in threads})
    result = runner.run(
        args.mem,
        args.nodes,
        topology,
        threads,
        args.repeat,
        args.peers,
        args.native,
        args.job,
        args.kernel,
        ["padata-mp", *args.argv],
    )
    # With --json -, standard output carries the JSON alone and the table goes to stderr.
    print(report.table(result), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json == "-":
        json.dump(result.to_json(), sys.stdout, indent=2)
        print()
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_json(), f, indent=2)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            report.write_csv(result, f)
    if args.plot:
        report.plot(result, args.plot)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .bench import compare, results

    if args.strict and args.fail_above is None:
        raise UsageError("--strict goes with --fail-above PCT")
    a, b = results.load(args.a), results.load(args.b)
    pct = compare.DEFAULT_PCT if args.fail_above is None else args.fail_above
    comparison = compare.compare(a, b, pct)
    print(compare.source("A", args.a, a))
    print(compare.source("B", args.b, b))
    print(compare.report(comparison, args.fail_above, args.rows))
    if args.fail_above is None:
        return 0
    unsettled = comparison.unsettled(pct, args.rows)
    for c in unsettled:
        print(f"padata-mp: not judged: {c.name}: {c.verdict}", file=sys.stderr)
    if comparison.regressions(pct, args.rows):
        return 1
    return 3 if args.strict and unsettled else 0


def status(text: str) -> None:
    """What a long run is doing, on one line of stderr rewritten in place; only on a terminal."""
    if sys.stderr.isatty():
        print(f"\r\033[K{text and 'padata-mp: ' + text}", end="", file=sys.stderr, flush=True)


COMMANDS = {"topology": cmd_topology, "init": cmd_init, "bench": cmd_bench, "compare": cmd_compare}


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``with`` block cleans up."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None, held: list[int] | None = None) -> int:
    """``padata-mp``.  ``held``: the signals that came while padata_mp.__main__ held them (it
    still does), before this module was imported."""
    previous = signal.SIG_DFL if held is not None else signal.getsignal(signal.SIGTERM)
    try:
        # From here on Ctrl-C and SIGTERM end in one line, even while numpy imports.
        signal.signal(signal.SIGTERM, _interrupt)
        # The imports under a hold: a C extension that a signal interrupts mid-import turns the
        # KeyboardInterrupt into an ImportError (numpy does), a traceback rather than one line.
        with deferred_interrupts():
            parser = build_parser()  # imports the benchmark, and with it the engine and numpy
        if held is not None:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if held:
                raise KeyboardInterrupt
        argv = sys.argv[1:] if argv is None else argv
        if not argv:  # alone: what it can do, rather than a usage error
            parser.print_help()
            return 0
        args = parser.parse_args(argv)
        args.argv = argv
        return COMMANDS[args.command](args)
    except (UsageError, BadValueError, BadTypeError, ShmSpaceError) as exc:  # bad input, before any work
        print(f"padata-mp: error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    except PadataError as exc:  # a failed proof or job: not the input's fault
        print(f"padata-mp: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("padata-mp: interrupted, cleaned up", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (| head): quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        signal.signal(signal.SIGTERM, previous)
