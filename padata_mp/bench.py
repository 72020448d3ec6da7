"""``padata-mp bench``: how a kernel job scales with processes, against the memory's limit, a native
reference and the Python peers, printed in the kernel series' table format.

The job is deferred init by default (``--job init``), or one of the series' next jobs: hugetlb's
boot pool, pmem struct pages, VFIO pinning, munmap, hugetlb fallocate.  Phases are timed apart:
creating and first-touching the blocks (and preparing the state the job starts from), attaching
and pre-faulting in the workers, the job (the headline, repeated from the same starting state),
and verify.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import ctypes
import hashlib
import importlib.resources
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadValueError
from .interrupts import deferred_interrupts
from .job import MtJob, claim_sequence, plan
from .mm import pages as pg
from .mm.deferred import DeferredInitWork, deferred_init, splice_all
from .mm.hugetlb import HUGE_ORDERS, HugetlbFile, HugetlbPool
from .mm.machine import Machine, MachineState
from .mm.mapping import BLOCK, Mapping, Munmap, VfioPin, mmap_populate
from .mm.pmem import DeviceMemory
from .mm.runner import NodeWork, node_threads, run_work
from .mm.sizes import parse_size
from .pool import Padata
from .ranges import ceil_div
from .shm import SharedArray
from .topology import Topology

KERNEL_PERCENTS = (12, 25, 37, 50, 75, 100)  # the series' thread counts, as % of a node's CPUs
NATIVE_SOURCE = "deferred_init.c"  # in padata_mp/native, shipped with the package
CEILING_REPEAT = 3  # STREAM reports the best of several runs
NATIVE = "native (C, pthreads)"
STORE_VALUE = 0x5A  # never benchmark stores of zero: memset has a faster path for it
JOBS = {
    "init": "deferred struct-page init",
    "hugetlb": "hugetlb boot pool, 2 MiB pages",
    "hugetlb-1g": "hugetlb boot pool, 1 GiB pages",
    "pmem": "pmem (ZONE_DEVICE) struct-page init",
    "vfio": "VFIO page pinning",
    "munmap": "munmap with buddy merging",
    "fallocate": "hugetlb fallocate clearing",
}
DEFAULT_MEM = {"fallocate": "2G"}  # the file's size: its frames are real memory; others: "64G"


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
    deferred_pages: int  # the pages the job works on (deferred init's deferred pages, by default)
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


def live(label: str) -> Callable[[float], None] | None:
    """A running job's progress on one line of stderr, rewritten in place; None off a terminal."""
    if not sys.stderr.isatty():
        return None
    return lambda done: print(
        f"\r\033[K[bench] {label} {done:.0%}" if done < 1 else "\r\033[K", end="", file=sys.stderr, flush=True
    )


# -- what is measured ------------------------------------------------------------------------


@dataclass
class Workload:
    """A job ready to be measured: its NodeWork over ``nodes`` simulated nodes, how to go back to
    its starting state (outside the timing), the blocks workers touch, and the block the ceiling
    stores to (what the job writes)."""

    name: str
    work: NodeWork
    nodes: int
    restore: Callable[[], None]
    shared_arrays: tuple[SharedArray, ...]
    written: SharedArray
    mem_per_node: list[int]
    machine: Machine | None = None  # for the native reference of deferred init


def create(
    job: str, mem: str | int, nodes: int | str, topology: Topology | None = None
) -> Machine | DeviceMemory | HugetlbFile:
    """The shared memory ``job`` works on: a simulated machine (``nodes`` "auto": one per node of
    ``topology``), a pmem device or a hugetlbfs file.  Every size check happens here, before any
    process starts."""
    if job not in JOBS:
        raise BadValueError(f"job must be one of {', '.join(JOBS)}, got {job!r}")
    if job == "pmem":
        return DeviceMemory(mem)
    if job == "fallocate":
        return HugetlbFile(mem)
    machine = Machine.create(mem, nodes, topology=topology)
    gig = 1 << HUGE_ORDERS["1G"]
    zones = [n.highest_zone for n in machine.nodes]
    if job == "hugetlb-1g" and not any(z.end_pfn // gig > ceil_div(z.first_deferred_pfn, gig) for z in zones):
        machine.close()
        raise BadValueError(
            f"--mem {mem} leaves no whole, aligned GiB of deferred memory on any node for a 1 GiB page"
        )
    return machine


def workload(
    job: str, base: Machine | DeviceMemory | HugetlbFile, engine: Padata, stack: contextlib.ExitStack
) -> Workload:
    """``job``'s starting state on ``base`` (deferred init first, for the jobs that come after it);
    what it creates is closed by ``stack``.  Half of a node's free memory goes to the huge pages
    and to the mapping that munmap and vfio work on."""
    if not isinstance(base, Machine):
        size = [base.pages * pg.PAGE_SIZE]
        return Workload(job, base, 1, base.reset, base.shared_arrays, base.shared_arrays[0], size)
    machine = base
    per_node = [(n.end_pfn - n.start_pfn) * pg.PAGE_SIZE for n in machine.nodes]
    memmap, nodes = machine.shared_arrays[0], len(machine.nodes)
    if job == "init":  # attached by the caller, in its timed attach phase
        work = DeferredInitWork(machine)
        return Workload(job, work, nodes, machine.reset, machine.shared_arrays, memmap, per_node, machine)
    # The later jobs start after deferred init: the machine's attach falls in their set-up.
    engine.attach(*machine.shared_arrays)
    deferred_init(machine, engine)
    work: Any
    if job.startswith("hugetlb"):
        size = "1G" if job == "hugetlb-1g" else "2M"
        rooms = {n.node: ceil_div(HugetlbPool.room(machine, size, n.node), 2) for n in machine.nodes}
        work = stack.enter_context(HugetlbPool(machine, size, rooms))
        restore = _restore(machine, machine.save_state(), work.reset)
        arrays = machine.shared_arrays + work.shared_arrays
    else:
        free = len(machine.free_lists.free_heads(machine.nodes[0].highest_zone, pg.MAX_ORDER))
        mapping = stack.enter_context(Mapping(machine, free // 2 * BLOCK))
        engine.attach(*mapping.shared_arrays)
        mmap_populate(mapping, engine)
        state, pfns = machine.save_state(), mapping.pfns.copy()
        if job == "munmap":
            work = Munmap(mapping, 0, mapping.pages)
            restore = _restore(machine, state, lambda: mapping.reset(pfns))
        else:
            work = stack.enter_context(VfioPin(mapping, 0, mapping.pages))
            restore = _restore(machine, state, work.reset)
        arrays = machine.shared_arrays + mapping.shared_arrays + getattr(work, "shared_arrays", ())
    return Workload(job, work, nodes, restore, arrays, memmap, per_node, machine)


def _restore(machine: Machine, state: MachineState, then: Callable[[], None]) -> Callable[[], None]:
    def restore() -> None:
        machine.restore_state(state)
        then()

    return restore


def plain_run(work: NodeWork, nodes: int) -> float:
    """The (0) row: each node's job as one call in this process, then the coordinator's part; ms."""
    began = time.perf_counter()
    jobs = work.begin(dict.fromkeys(range(nodes), 1))
    for node, job in jobs.items():
        _call((job.thread_fn, job.start, job.end, job.fn_arg))
        work.end(node)
    return (time.perf_counter() - began) * 1e3


def store_chunk(start: int, end: int, arg: tuple[SharedArray, str]) -> None:
    """Ceiling thread_fn: store a non-zero value over rows [start, end) of the block."""
    block, how = arg
    tile = block.array[start:end]
    if how == "memset":
        ctypes.memset(tile.ctypes.data, STORE_VALUE, tile.nbytes)
    else:
        tile.fill(STORE_VALUE * 0x0101010101010101)


def ceiling(engine: Padata, block: SharedArray, processes: int) -> dict[str, float]:
    """Store bandwidth of ``processes`` processes over ``block`` (already pre-faulted everywhere):
    numpy fill and memset, best of CEILING_REPEAT each; GB/s."""
    rows = block.array.shape[0]
    per_chunk = max(1, pg.TILE * pg.STRUCT_PAGE_SIZE // (block.array.nbytes // rows))
    out = {}
    for how in ("fill", "memset"):
        job = MtJob(
            store_chunk, (block, how), 0, rows, align=per_chunk, min_chunk=per_chunk, max_threads=processes
        )
        best = min(engine.do_multithreaded(job).elapsed_s for _ in range(CEILING_REPEAT))
        out[how] = block.array.nbytes / best / 1e9
    return out


def _call(task: tuple[Callable, int, int, Any]) -> None:
    """One chunk of a job, as the peers run it: thread_fn's error return is an error here too."""
    thread_fn, start, end, arg = task
    if thread_fn(start, end, arg):
        raise RuntimeError(f"thread_fn failed on [{start}, {end})")


def attach_in_worker(arrays: tuple[SharedArray, ...]) -> None:
    """Pool initializer: map and pre-fault the blocks once per worker, as padata's workers do."""
    for array in arrays:
        array.array  # noqa: B018


def peer_run(work: NodeWork, nodes: int, threads: int, mapper: Callable, engine: Padata) -> float:
    """The job with the same chunks (the kernel's chunk size for ``threads``) through a peer's map;
    the coordinator's part before and after as padata_mp runs it.  ms."""
    began = time.perf_counter()
    jobs = work.begin(node_threads(engine, range(nodes), threads))
    mapper(
        [
            (job.thread_fn, s, e, job.fn_arg)
            for job in jobs.values()
            for s, e in claim_sequence(job, plan(job, threads).chunk_size)
        ]
    )
    for node in jobs:
        work.end(node)
    return (time.perf_counter() - began) * 1e3


def peers(
    arrays: tuple[SharedArray, ...], threads: int, stack: contextlib.ExitStack
) -> dict[str, Callable[[list], object]]:
    """Each peer set up as a careful user would: the pool made (and its workers attached) before
    timing, the same chunk function and chunk size.  name -> mapper.  Each pool is closed by
    ``stack``; Ctrl-C is held while they start (a pool interrupted half made leaves workers that
    nobody stops) and their processes start with it blocked, so they leave it to us."""
    with deferred_interrupts(), _sigint_blocked():
        return _start_peers(arrays, threads, stack)


def _start_peers(
    arrays: tuple[SharedArray, ...], threads: int, stack: contextlib.ExitStack
) -> dict[str, Callable[[list], object]]:
    ctx = multiprocessing.get_context("forkserver")
    pool = ctx.Pool(threads, initializer=attach_in_worker, initargs=(arrays,))
    stack.callback(pool.terminate)
    ppe = concurrent.futures.ProcessPoolExecutor(
        threads, mp_context=ctx, initializer=attach_in_worker, initargs=(arrays,)
    )
    stack.callback(ppe.shutdown, cancel_futures=True)
    tpe = stack.enter_context(concurrent.futures.ThreadPoolExecutor(threads))
    made = {
        "Pool.map": lambda tasks: pool.map(_call, tasks, chunksize=1),
        "ProcessPoolExecutor": lambda tasks: list(ppe.map(_call, tasks)),
        "ThreadPoolExecutor": lambda tasks: list(tpe.map(_call, tasks)),
    }
    # Warm up: every worker started and attached (pre-faulted) before any timing.
    pool.map(attach_in_worker, [arrays] * threads, chunksize=1)
    list(ppe.map(attach_in_worker, [arrays] * threads))
    try:
        import joblib
    except ImportError:
        return made
    # As a context manager: its workers and its memmapping folder in /dev/shm go on exit.
    parallel = stack.enter_context(joblib.Parallel(n_jobs=threads, backend="loky"))
    parallel(joblib.delayed(attach_in_worker)(arrays) for _ in range(4 * threads))
    made["joblib"] = lambda tasks: parallel(joblib.delayed(_call)(t) for t in tasks)
    return made


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread while it starts processes: they inherit the mask (across exec
    too, where loky starts fresh interpreters) and leave Ctrl-C to us.  A Ctrl-C meanwhile stays
    pending until the block ends."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def build_native(source: str = NATIVE_SOURCE) -> Path | None:
    """The native reference, compiled once per version of its source into the user's cache (an
    atomic rename, so runs at once are safe); None, and why in one line on stderr, where no
    compiler is found or it fails."""
    code = importlib.resources.files("padata_mp").joinpath("native", source).read_bytes()
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        progress("native reference skipped: no C compiler (set CC, or install gcc)")
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "padata_mp"
    binary = cache / f"{Path(source).stem}-{hashlib.sha256(code).hexdigest()[:16]}"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as work:
        src = Path(work) / source
        src.write_bytes(code)
        built = subprocess.run(
            [compiler, "-O2", "-pthread", "-o", str(Path(work) / "out"), str(src)],
            capture_output=True,
            text=True,
        )
        if built.returncode != 0:
            why = (built.stderr.strip().splitlines() or [f"exit status {built.returncode}"])[-1]
            progress(f"native reference skipped: {compiler} failed: {why}")
            return None
        os.replace(Path(work) / "out", binary)
    return binary


def native_init(binary: Path, machine: Machine, threads: int) -> float:
    """The native reference on this machine's shared memory, then the splice; ms as it measures."""
    memmap, pageblocks, records = (f"/dev/shm/{a.name}" for a in machine.shared_arrays)
    jobs = [
        f"{j.fn_arg.node}:{j.fn_arg.zone}:{j.start}:{j.end}:{j.fn_arg.end_pfn}:{threads}:"
        f"{plan(j, threads).chunk_size}"
        for j in DeferredInitWork(machine).begin(dict.fromkeys(range(len(machine.nodes)), threads)).values()
        if j.size
    ]
    out = subprocess.run(
        [str(binary), memmap, pageblocks, records, str(machine.total_pages), *jobs],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    ns = int(out.split("total")[1])
    began = time.perf_counter()
    splice_all(machine)
    return ns / 1e6 + (time.perf_counter() - began) * 1e3


# -- the run ---------------------------------------------------------------------------------


def run(
    mem: str | int | None,
    nodes: int | str,
    topology: Topology,
    threads: list[int] | None = None,
    repeat: int = 5,
    with_peers: bool = False,
    with_native: bool = True,
    job: str = "init",
) -> Result:
    """Measure everything for ``job`` in one run; raise if any run fails to verify.  ``mem`` None:
    the job's default (64G of simulated memory; a 2G file for fallocate).  An unknown job is a
    ValueError from ``create``, before any process starts."""
    mem = mem or DEFAULT_MEM.get(job, "64G")
    node_cpus = min(len(n.cpus) for n in topology.nodes_with_cpus)
    counts = thread_counts(node_cpus, threads)
    result = Result(
        machine=machine_info(topology),
        config={"job": job, "mem": str(mem), "threads": [t for t, _ in counts], "repeat": repeat},
        deferred_pages=0,
    )
    workers = max(t for t, _ in counts) * len(topology.nodes_with_cpus)
    began = time.perf_counter()
    # The blocks first: their checks (sizes, nodes, room in /dev/shm) come before any process starts.
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(create(job, mem, nodes, topology))
        progress(f"preparing {JOBS[job]} on {parse_size(mem) / 2**30:g} GiB")
        engine = stack.enter_context(Padata(workers, topology=topology))
        result.machine["start_method"] = engine.start_method
        load = workload(job, base, engine, stack)
        result.phases_s["create"] = time.perf_counter() - began
        result.config["nodes"] = load.nodes
        result.deferred_pages = load.work.pages
        result.machine["bytes_per_page"] = load.work.bytes_per_page
        result.machine["memmap_bytes"] = load.written.array.nbytes
        result.machine["mem_per_node_bytes"] = load.mem_per_node
        attach = engine.attach(*load.shared_arrays)
        result.phases_s["attach"] = max(attach.values(), default=0.0)
        times = _measure(engine, load, counts, topology, repeat, with_peers, with_native, result)
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


def _measure(
    engine: Padata,
    load: Workload,
    counts: list[tuple[int, float]],
    topology: Topology,
    repeat: int,
    with_peers: bool,
    with_native: bool,
    result: Result,
) -> dict[tuple[str, int], list[float]]:
    """The ceiling per thread count, then every configuration's runs."""
    # The ceiling runs as many processes as the job does: threads on each busy node.
    busy_nodes = min(load.nodes, len(topology.nodes_with_cpus))
    binary = None
    if with_native and load.name == "init":
        binary = build_native()
    elif with_native:
        progress(f"no native reference for --job {load.name}: only deferred init has one")
    with contextlib.ExitStack() as stack:
        made = {count: peers(load.shared_arrays, count, stack) for count, _ in counts} if with_peers else {}
        runs: dict[tuple[str, int], Callable[[], float]] = {
            ("(0)", 0): lambda: plain_run(load.work, load.nodes)
        }
        for count, _ in counts:
            progress(f"ceiling, {count} thread(s) per node")
            result.ceiling_gbps[count] = ceiling(engine, load.written, count * busy_nodes)
            runs[("padata_mp", count)] = lambda c=count: (
                run_work(
                    load.work, range(load.nodes), engine, c, live(f"padata_mp, {c} thread(s):")
                ).elapsed_ms
            )
            if binary and load.machine:
                runs[(NATIVE, count)] = lambda c=count: native_init(binary, load.machine, c)
            for name, mapper in made.get(count, {}).items():
                runs[(name, count)] = lambda c=count, m=mapper: peer_run(load.work, load.nodes, c, m, engine)
        return _rounds(load, runs, repeat, result.phases_s)


def _rounds(
    load: Workload, runs: dict[tuple[str, int], Callable[[], float]], repeat: int, phases: dict
) -> dict[tuple[str, int], list[float]]:
    """Every configuration once per round, ``repeat`` rounds, so drift in a shared machine's speed
    falls on all of them alike, and each round starting one configuration later, so whatever comes
    of running after another (caches, the previous verify) does not always fall on the same one.
    Each run from the job's starting state, verified after.  ms."""
    times: dict[tuple[str, int], list[float]] = {key: [] for key in runs}
    keys = list(runs)
    for round_ in range(repeat):
        progress(f"round {round_ + 1}/{repeat}: {len(runs)} configurations")
        shift = round_ % len(keys)
        for key in keys[shift:] + keys[:shift]:
            run_once = runs[key]
            load.restore()
            times[key].append(run_once())
            began = time.perf_counter()
            load.work.verify()
            phases["verify"] = time.perf_counter() - began
    return times


def finish(result: Result) -> None:
    """Fill in speedups, rates and ceiling fractions from the medians."""
    base = result.rows[0].time_ms
    for row in result.rows:
        row.speedup = 100.0 * (base - row.time_ms) / base
        row.ratio = base / row.time_ms
        row.pages_per_s = result.deferred_pages / (row.time_ms / 1e3)
        row.gbps = row.pages_per_s * result.machine.get("bytes_per_page", pg.STRUCT_PAGE_SIZE) / 1e9
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
        f"job: {JOBS[config.get('job', 'init')]}; simulated: {config['nodes']} node(s), GiB per node "
        f"{per_node}; {memmap_gib:.2f} GiB written to; {result.deferred_pages} pages",
        f"phases: create {phases['create']:.2f} s, attach {phases['attach']:.2f} s, "
        f"verify {phases.get('verify', 0):.2f} s; the job below (median of {config['repeat']})",
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
            "  ceiling (store bandwidth over the block the job writes, best of 3): "
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
        xlabel="threads",
        ylabel="speedup over the (0) row",
        title=f"{JOBS[result.config.get('job', 'init')]}: speedup",
        xticks=threads,
    )
    ax1.set_ylim(bottom=0)
    ax1.legend()
    ax2.plot(threads, [r.gbps for r in rows], "o-", label="padata_mp")
    ceilings = [max(result.ceiling_gbps[t].values()) for t in threads]
    ax2.plot(threads, ceilings, "k--", label="store ceiling")
    ax2.set(xlabel="threads", ylabel="GB/s", title="bytes written", xticks=threads)
    ax2.set_ylim(bottom=0)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path)
