"""``padata-mp bench``: how deferred init scales with processes, against the memory's limit, a native
reference and the Python peers, printed in the kernel series' table format.

Phases are timed apart: creating and first-touching the machine, attaching and pre-faulting in the
workers, deferred init (the headline, repeated on one machine reset between runs), and verify.
"""

from __future__ import annotations

import concurrent.futures
import csv
import ctypes
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import pages as pg
from .job import MtJob, claim_sequence, plan
from .mm import Machine, ZoneJob, deferred_init, init_chunk, parse_size
from .pool import Padata
from .shm import SharedArray
from .topology import Topology

KERNEL_PERCENTS = (12, 25, 37, 50, 75, 100)  # the series' thread counts, as % of a node's CPUs
NATIVE_SOURCE = Path(__file__).resolve().parent.parent / "bench" / "deferred_init.c"
CEILING_REPEAT = 3  # STREAM reports the best of several runs
NATIVE = "native (C, pthreads)"
STORE_VALUE = 0x5A  # never benchmark stores of zero: memset has a faster path for it


@dataclass
class Row:
    threads: int  # 0: the plain single-process loop, no engine
    node_percent: float
    time_ms: float  # median
    stdev_ms: float
    speedup: float = 0.0  # time saved against the (0) row, in percent, as the kernel states it
    ratio: float = 1.0  # (0) row time / this time
    pages_per_s: float = 0.0
    gbps: float = 0.0
    ceiling_fraction: float | None = None


@dataclass
class Result:
    machine: dict
    config: dict
    deferred_pages: int
    phases_s: dict = field(default_factory=dict)
    ceiling_gbps: dict = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    native: list[dict] = field(default_factory=list)
    peers: list[dict] = field(default_factory=list)


def thread_counts(node_cpus: int, threads: list[int] | None = None) -> list[tuple[int, float]]:
    """(threads, % of the node's CPUs): ``threads`` as given, or the kernel series' 1 thread then
    12, 25, 37, 50, 75 and 100% of the node's CPUs, without repeats."""
    counts = threads or [1] + [max(1, round(p * node_cpus / 100)) for p in KERNEL_PERCENTS]
    return [(t, 100.0 * t / node_cpus) for t in dict.fromkeys(counts)]


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- what is measured ------------------------------------------------------------------------


def plain_init(machine: Machine) -> float:
    """The (0) row: each node's range in one loop of this process, then the splice; ms."""
    began = time.perf_counter()
    for zone, start, end in machine.deferred_ranges():
        if end > start:
            init_chunk(start, end, machine.zone_job(zone))
    machine.splice_all()
    return (time.perf_counter() - began) * 1e3


def store_chunk(start: int, end: int, arg: tuple[SharedArray, str]) -> None:
    """Ceiling thread_fn: store a non-zero value over pages [start, end) of the memmap."""
    block, how = arg
    tile = block.array[start:end]
    if how == "memset":
        ctypes.memset(tile.ctypes.data, STORE_VALUE, tile.nbytes)
    else:
        tile.fill(STORE_VALUE * 0x0101010101010101)


def ceiling(engine: Padata, machine: Machine, processes: int) -> dict[str, float]:
    """Store bandwidth of ``processes`` processes over the memmap (already pre-faulted everywhere):
    numpy fill and memset, best of CEILING_REPEAT each; GB/s."""
    block = machine.shared_arrays[0]
    out = {}
    for how in ("fill", "memset"):
        job = MtJob(
            store_chunk,
            (block, how),
            0,
            machine.total_pages,
            align=pg.TILE,
            min_chunk=pg.TILE,
            max_threads=processes,
        )
        best = min(engine.do_multithreaded(job).elapsed_s for _ in range(CEILING_REPEAT))
        out[how] = machine.memmap_bytes / best / 1e9
    return out


def node_jobs(machine: Machine, threads: int) -> list[MtJob]:
    """Deferred init's job per node with work, as deferred_init builds it, for the peers and the
    native run."""
    jobs = [machine.init_job(zone, threads) for zone, _, _ in machine.deferred_ranges()]
    return [job for job in jobs if job.size]


def peer_chunk(task: tuple[int, int, ZoneJob]) -> None:
    init_chunk(*task)


def attach_in_worker(arrays: tuple[SharedArray, ...]) -> None:
    """Pool initializer: map and pre-fault the machine once per worker, as padata's workers do."""
    for array in arrays:
        array.array  # noqa: B018


def peer_init(machine: Machine, threads: int, mapper: Callable) -> float:
    """Deferred init with the same chunks (the kernel's chunk size for ``threads``) through a peer's
    map; then the splice.  ms."""
    tasks = [
        (s, e, job.fn_arg)
        for job in node_jobs(machine, threads)
        for s, e in claim_sequence(job, plan(job, threads).chunk_size)
    ]
    began = time.perf_counter()
    mapper(tasks)
    machine.splice_all()
    return (time.perf_counter() - began) * 1e3


def peers(machine: Machine, threads: int) -> dict[str, tuple[Callable[[list], object], Callable[[], None]]]:
    """Each peer set up as a careful user would: the pool made (and its workers attached) before
    timing, the same chunk function and chunk size.  name -> (mapper, closer)."""
    ctx = multiprocessing.get_context("forkserver")
    arrays = machine.shared_arrays
    pool = ctx.Pool(threads, initializer=attach_in_worker, initargs=(arrays,))
    ppe = concurrent.futures.ProcessPoolExecutor(
        threads, mp_context=ctx, initializer=attach_in_worker, initargs=(arrays,)
    )
    tpe = concurrent.futures.ThreadPoolExecutor(threads)
    made = {
        "Pool.map": (lambda tasks: pool.map(peer_chunk, tasks, chunksize=1), pool.terminate),
        "ProcessPoolExecutor": (lambda tasks: list(ppe.map(peer_chunk, tasks)), ppe.shutdown),
        "ThreadPoolExecutor": (lambda tasks: list(tpe.map(peer_chunk, tasks)), tpe.shutdown),
    }
    # Warm up: every worker started and attached (pre-faulted) before any timing.
    pool.map(attach_in_worker, [arrays] * threads, chunksize=1)
    list(ppe.map(attach_in_worker, [arrays] * threads))
    try:
        import joblib
    except ImportError:
        return made
    parallel = joblib.Parallel(n_jobs=threads, backend="loky")
    parallel(joblib.delayed(attach_in_worker)(arrays) for _ in range(4 * threads))
    made["joblib"] = (lambda tasks: parallel(joblib.delayed(peer_chunk)(t) for t in tasks), lambda: None)
    return made


def build_native(source: Path = NATIVE_SOURCE) -> Path | None:
    """Compile the native reference; None (and why, on stderr) without a compiler or source."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or not source.exists():
        progress(f"native reference skipped: {'no C compiler' if compiler is None else f'no {source}'}")
        return None
    binary = Path(tempfile.gettempdir()) / f"padata_mp_native_{os.getuid()}"
    subprocess.run([compiler, "-O2", "-pthread", "-o", str(binary), str(source)], check=True)
    return binary


def native_init(binary: Path, machine: Machine, threads: int) -> float:
    """The native reference on this machine's shared memory, then the splice; ms as it measures."""
    memmap, pageblocks, records = (f"/dev/shm/{a.name}" for a in machine.shared_arrays)
    jobs = [
        f"{j.fn_arg.node}:{j.fn_arg.zone}:{j.start}:{j.end}:{j.fn_arg.end_pfn}:{threads}:"
        f"{plan(j, threads).chunk_size}"
        for j in node_jobs(machine, threads)
    ]
    out = subprocess.run(
        [str(binary), memmap, pageblocks, records, str(machine.total_pages), *jobs],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    ns = int(out.split("total")[1])
    began = time.perf_counter()
    machine.splice_all()
    return ns / 1e6 + (time.perf_counter() - began) * 1e3


# -- the run ---------------------------------------------------------------------------------


def run(
    mem: str | int,
    nodes: int | str,
    topology: Topology,
    threads: list[int] | None = None,
    repeat: int = 5,
    with_peers: bool = False,
    with_native: bool = True,
) -> Result:
    """Measure everything in one run; raise if any run fails to verify."""
    began = time.perf_counter()
    progress(f"creating a {parse_size(mem) / 2**30:g} GiB machine over {nodes} node(s)")
    with Machine.create(mem, nodes) as machine:
        created = time.perf_counter() - began
        node_cpus = min(len(n.cpus) for n in topology.nodes_with_cpus)
        counts = thread_counts(node_cpus, threads)
        result = Result(
            machine=machine_info(topology),
            config={
                "mem": str(mem),
                "nodes": len(machine.nodes),
                "threads": [t for t, _ in counts],
                "repeat": repeat,
            },
            deferred_pages=sum(machine.deferred_count(n.highest_zone) for n in machine.nodes),
        )
        result.phases_s["create"] = created
        result.machine["memmap_bytes"] = machine.memmap_bytes
        result.machine["mem_per_node_bytes"] = [
            (n.end_pfn - n.start_pfn) * pg.PAGE_SIZE for n in machine.nodes
        ]
        workers = max(t for t, _ in counts) * len(topology.nodes_with_cpus)
        # The ceiling runs as many processes as deferred init does: threads on each busy node.
        busy_nodes = min(len(machine.nodes), len(topology.nodes_with_cpus))
        with Padata(workers, topology=topology) as engine:
            result.machine["start_method"] = engine.start_method
            attach = engine.attach(*machine.shared_arrays)
            result.phases_s["attach"] = max(attach.values(), default=0.0)

            binary = build_native() if with_native else None
            made = {count: peers(machine, count) for count, _ in counts} if with_peers else {}
            try:
                runs = {("(0)", 0): lambda: plain_init(machine)}
                for count, _ in counts:
                    progress(f"ceiling, {count} thread(s) per node")
                    result.ceiling_gbps[count] = ceiling(engine, machine, count * busy_nodes)
                    runs[("padata_mp", count)] = lambda c=count: deferred_init(machine, engine, c).elapsed_ms
                    if binary:
                        runs[(NATIVE, count)] = lambda c=count: native_init(binary, machine, c)
                    for name, (mapper, _) in made.get(count, {}).items():
                        runs[(name, count)] = lambda c=count, m=mapper: peer_init(machine, c, m)
                times = _rounds(machine, runs, repeat, result.phases_s)
            finally:
                for pools in made.values():
                    for _, close in pools.values():
                        close()
        for (name, count), ms in times.items():
            median, stdev = statistics.median(ms), statistics.stdev(ms) if len(ms) > 1 else 0.0
            if name in ("(0)", "padata_mp"):
                percent = 0.0 if count == 0 else 100.0 * count / node_cpus
                result.rows.append(Row(count, percent, median, stdev))
            else:
                runs_of = result.native if name == NATIVE else result.peers
                runs_of.append({"name": name, "threads": count, "time_ms": median, "stdev_ms": stdev})
    finish(result)
    return result


def _rounds(
    machine: Machine, runs: dict[tuple[str, int], Callable[[], float]], repeat: int, phases: dict
) -> dict[tuple[str, int], list[float]]:
    """Every configuration once per round, ``repeat`` rounds, so drift in a shared machine's speed
    falls on all of them alike; each run on a reset machine, verified after.  ms per run."""
    times: dict[tuple[str, int], list[float]] = {key: [] for key in runs}
    for round_ in range(repeat):
        progress(f"round {round_ + 1}/{repeat}: {len(runs)} configurations")
        for key, run_once in runs.items():
            machine.reset()
            times[key].append(run_once())
            began = time.perf_counter()
            machine.verify()
            phases["verify"] = time.perf_counter() - began
    return times


def finish(result: Result) -> None:
    """Fill in speedups, rates and ceiling fractions from the medians."""
    base = result.rows[0].time_ms
    for row in result.rows:
        row.speedup = 100.0 * (base - row.time_ms) / base
        row.ratio = base / row.time_ms
        row.pages_per_s = result.deferred_pages / (row.time_ms / 1e3)
        row.gbps = row.pages_per_s * pg.STRUCT_PAGE_SIZE / 1e9
        ceiling_gbps = max(result.ceiling_gbps.get(row.threads or 1, {}).values(), default=0.0)
        row.ceiling_fraction = row.gbps / ceiling_gbps if ceiling_gbps else None


def machine_info(topology: Topology) -> dict:
    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return "unknown"

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "usable_cpus": topology.cpu_limit,
        "topology": topology.source,
        "nodes": [{"node": n.id, "cpus": list(n.cpus), "mem_bytes": n.mem_bytes} for n in topology.nodes],
        "kernel": platform.release(),
        "thp": read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "thp_shmem": read("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


# -- output ----------------------------------------------------------------------------------


def table(result: Result) -> str:
    m, config, phases = result.machine, result.config, result.phases_s
    host_nodes = [n for n in m["nodes"] if n["cpus"]]
    cpus = min(len(n["cpus"]) for n in host_nodes)
    per_node = ", ".join(f"{b / 2**30:.1f}" for b in m["mem_per_node_bytes"])
    memmap_gib = m["memmap_bytes"] / 2**30
    lines = [
        f"{m['cpu_model']}, {len(host_nodes)} node(s) x {cpus} CPU(s) ({m['topology']})",
        f"simulated: {config['nodes']} node(s), GiB per node {per_node}; memmap {memmap_gib:.2f} GiB; "
        f"{result.deferred_pages} deferred pages",
        f"phases: create {phases['create']:.2f} s, attach {phases['attach']:.2f} s, "
        f"verify {phases.get('verify', 0):.2f} s; deferred init below (median of {config['repeat']})",
        "",
        "  node% (thr) | speedup  ratio | time_ms (stdev)    | Mpages/s |  GB/s | % of ceiling",
        "  ----------- | -------------- | ------------------ | -------- | ----- | ------------",
    ]
    for row in result.rows:
        label = "     (0)" if row.threads == 0 else f"{row.node_percent:5.0f}% ({row.threads})"
        ceiling = "" if row.ceiling_fraction is None else f"{100 * row.ceiling_fraction:5.1f}%"
        rate = row.pages_per_s / 1e6
        lines.append(
            f"  {label:>11} | {row.speedup:6.1f}% {row.ratio:5.2f}x | "
            f"{row.time_ms:9.1f} ({row.stdev_ms:6.1f}) | {rate:8.1f} | {row.gbps:5.2f} | {ceiling:>12}"
        )
    if result.ceiling_gbps:
        lines.append("")
        lines.append(
            "  ceiling (store bandwidth over the memmap, best of 3): "
            + "; ".join(
                f"{t} thr fill {c['fill']:.1f} memset {c['memset']:.1f} GB/s"
                for t, c in result.ceiling_gbps.items()
            )
        )
    others = result.native + result.peers
    if others:
        padata = {r.threads: r.time_ms for r in result.rows if r.threads}
        lines += ["", "  other (thr)                 | time_ms (stdev)    | Mpages/s | padata_mp time / this"]
        for o in others:
            rate = result.deferred_pages / (o["time_ms"] / 1e3) / 1e6
            label = f"{o['name']} ({o['threads']})"
            lines.append(
                f"  {label:27} | {o['time_ms']:9.1f} ({o['stdev_ms']:6.1f}) | {rate:8.1f} | "
                f"{padata[o['threads']] / o['time_ms']:.2f}"
            )
    return "\n".join(lines)


def to_json(result: Result) -> dict:
    data = asdict(result)
    data["ceiling_gbps"] = {str(k): v for k, v in result.ceiling_gbps.items()}
    return data


def write_csv(result: Result, path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(result.rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in result.rows)


def plot(result: Result, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.rows if r.threads]
    threads = [r.threads for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(threads, [r.ratio for r in rows], "o-", label="padata_mp")
    native = [n for n in result.native if n["threads"] in threads]
    if native:
        base = result.rows[0].time_ms
        ax1.plot(
            [n["threads"] for n in native], [base / n["time_ms"] for n in native], "s--", label="native C"
        )
    ax1.set(
        xlabel="threads", ylabel="speedup over the (0) row", title="deferred init speedup", xticks=threads
    )
    ax1.set_ylim(bottom=0)
    ax1.legend()
    ax2.plot(threads, [r.gbps for r in rows], "o-", label="padata_mp init")
    ceilings = [max(result.ceiling_gbps[t].values()) for t in threads]
    ax2.plot(threads, ceilings, "k--", label="store ceiling")
    ax2.set(xlabel="threads", ylabel="GB/s", title="struct pages written", xticks=threads)
    ax2.set_ylim(bottom=0)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path)
