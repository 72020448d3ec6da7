"""One benchmark run: the job's memory made and brought to its starting state, the workers attached,
then every configuration (the plain loop, the engine per kernel and thread count, the native
reference, the peers) run once per round from the same starting state, each run verified.

Phases are timed apart: creating and first-touching the blocks (and preparing the state the job
starts from), attaching and pre-faulting in the workers, the job (the headline, repeated), verify.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

import padata_mp

from ..checks import require
from ..errors import PadataError
from ..job import MtJob
from ..mm.kernels import check_kernel
from ..mm.runner import NodeWork, run_work
from ..mm.sizes import parse_size
from ..native import Built, build, stream_width
from ..pool import Padata
from ..topology import Topology
from . import native, workloads
from .peers import peer_run, peers
from .results import CEILING, NATIVE, NATIVE_STREAM, SCHEMA, Result, Row
from .workloads import Workload

KERNEL_PERCENTS = (12, 25, 37, 50, 75, 100)  # the series' thread counts, as % of a node's CPUs
ROUND_TRIP_RUNS = 20
Key = tuple[str, str, str, int]  # Row.key: kind, name, kernel, threads


def thread_counts(node_cpus: int, threads: list[int] | None = None) -> list[int]:
    """``threads`` as given, or the kernel series' 1 thread then 12, 25, 37, 50, 75 and 100% of
    the node's CPUs, without repeats."""
    return list(dict.fromkeys(threads or [1] + [max(1, round(p * node_cpus / 100)) for p in KERNEL_PERCENTS]))


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(
    mem: str | int | None,
    nodes: int | str,
    topology: Topology,
    threads: list[int] | None = None,
    repeat: int = 5,
    with_peers: bool = False,
    with_native: bool = True,
    job: str = "init",
    kernel: str | None = None,
    argv: list[str] | None = None,
) -> Result:
    """Measure everything for ``job`` in one run; raise if any run fails to verify.  ``mem`` None:
    the job's default.  ``kernel`` None: every chunk kernel the job has ("c" only where it can be
    built); "numpy" or "c": that one, and PadataError where "c" cannot be built.  Bad names are a
    BadValueError before any process starts."""
    spec = workloads.job(job)
    require(
        kernel is None or kernel in spec.kernels,
        f"--kernel {kernel}: --job {job} has the {', '.join(spec.kernels)} kernel(s)",
    )
    mem = mem or spec.default_mem
    node_cpus = min(len(n.cpus) for n in topology.nodes_with_cpus)
    counts = thread_counts(node_cpus, threads)
    result = Result(
        machine_info(topology), {"job": job, "mem": str(mem), "threads": counts, "repeat": repeat}
    )
    result.meta = {
        "schema": SCHEMA,
        "padata_mp_version": padata_mp.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": argv if argv is not None else sys.argv,
    }
    workers = max(counts) * len(topology.nodes_with_cpus)
    began = time.perf_counter()
    # The blocks first: their checks (sizes, nodes, room in /dev/shm) come before any process starts.
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(spec.create(mem, nodes, topology))
        kernels = result.config["kernels"] = _kernels(spec, kernel, result.skipped)
        library = build("library")
        if "c-stream" in kernels and library.path:
            result.config["stream_bytes"] = stream_width(str(library.path))
        if library.path is None:
            _skip(
                result.skipped, f"native ceiling skipped, numpy's through the engine instead: {library.why}"
            )
        program = _native_program(job, with_native, result.skipped)
        if with_peers and importlib.util.find_spec("joblib") is None:
            _skip(result.skipped, "joblib rows skipped: joblib is not installed (pip install joblib)")
        progress(f"preparing {spec.description} on {parse_size(mem) / 2**30:g} GiB")
        engine = stack.enter_context(Padata(workers, topology=topology))
        result.machine["start_method"] = engine.start_method
        load = spec.prepare(base, engine, stack, kernels)
        result.phases_s["create"] = time.perf_counter() - began
        result.config["nodes"] = load.nodes
        result.pages, result.bytes_per_page = load.work.pages, load.work.bytes_per_page
        result.machine["memmap_bytes"] = load.written.array.nbytes
        result.machine["mem_per_node_bytes"] = load.mem_per_node
        attach = engine.attach(*load.shared_arrays)
        result.phases_s["attach"] = max(attach.values(), default=0.0)
        result.round_trip_ms = round_trip(engine)
        # The ceiling runs as many processes as the job does: threads on each busy node.
        busy_nodes = min(load.nodes, len(topology.nodes_with_cpus))
        result.ceiling_method = native.NATIVE_CEILING if library.path else native.ENGINE_CEILING
        with contextlib.ExitStack() as pools:
            runs = configurations(engine, load, counts, program, pools if with_peers else None)
            runs.update(ceilings(engine, load, counts, busy_nodes, library.path))
            times = rounds(load, runs, repeat, result.phases_s)
    for (kind, name, kernel_of, count), ms in times.items():
        rows = {"native": result.native, "peer": result.peers, "ceiling": result.ceilings}.get(
            kind, result.rows
        )
        rows.append(Row(kind, name, kernel_of, count, ms))
    result.finish()
    return result


def ceilings(
    engine: Padata, load: Workload, counts: list[int], busy_nodes: int, library: Path | None
) -> dict[Key, Callable[[], float]]:
    """The store ceiling's configurations, by Row.key: at each thread count, as many processes as
    the job runs (threads on each busy node) storing over the block the job writes, each way
    native.ceiling_kinds has; ms a pass."""
    return {
        ("ceiling", CEILING, how, count): functools.partial(
            native.store_ms, library, engine, load.written, count * busy_nodes, how
        )
        for count in counts
        for how in native.ceiling_kinds(library)
    }


def _skip(skipped: list[str], why: str) -> None:
    skipped.append(why)
    progress(why)


def _kernels(spec: workloads.Job, kernel: str | None, skipped: list[str]) -> list[str]:
    """The chunk kernels to measure: the one asked for, else every one the job has that builds."""
    if kernel is not None:
        require(
            kernel in spec.kernels,
            f"{spec.description} has the kernels {', '.join(spec.kernels)}; --kernel {kernel} is not one",
        )
        check_kernel(kernel)  # PadataError, saying why, where a C kernel cannot be built
        return [kernel]
    if any(k != "numpy" for k in spec.kernels) and build("library").path is None:
        _skip(skipped, f"C kernel rows skipped: {build('library').why}")
        return ["numpy"]
    return list(spec.kernels)


def _native_program(job: str, with_native: bool, skipped: list[str]) -> Path | None:
    if not with_native:
        return None
    if job != "init":
        _skip(skipped, f"no native reference for --job {job}: only deferred init has one")
        return None
    program: Built = build("program")
    if program.path is None:
        _skip(skipped, f"native reference skipped: {program.why}")
    return program.path


def nothing(start: int, end: int, arg: object) -> None:
    """An empty chunk: what the engine's round trip is measured with."""


def round_trip(engine: Padata) -> float:
    """The engine's fixed cost of a job: an empty job of 8 chunks on every worker, median of
    ROUND_TRIP_RUNS, ms."""
    job = MtJob(nothing, None, 0, 8, max_threads=len(engine.workers) + 1)
    times = []
    for _ in range(ROUND_TRIP_RUNS):
        began = time.perf_counter()
        engine.do_multithreaded(job)
        times.append((time.perf_counter() - began) * 1e3)
    return float(np.median(times))


def _engine_run(work: NodeWork, nodes: int, engine: Padata, threads: int) -> float:
    """The engine's row: as deferred_init runs it (no on_progress, which would take the caller's
    part away); ms."""
    return run_work(work, range(nodes), engine, threads).elapsed_ms


def plain_run(load: Workload, kernel: str) -> float:
    """The (0) row: each node's job as one call in this process, then the coordinator's part; ms."""
    work = load.works[kernel]
    began = time.perf_counter()
    jobs = work.begin(dict.fromkeys(range(load.nodes), 1))
    for node, job in jobs.items():
        if job.size and job.thread_fn(job.start, job.end, job.fn_arg):  # as the engine: none for none
            raise PadataError(f"thread_fn failed on [{job.start}, {job.end})")
        work.end(node)
    return (time.perf_counter() - began) * 1e3


def configurations(
    engine: Padata,
    load: Workload,
    counts: list[int],
    program: Path | None,
    pools: contextlib.ExitStack | None,
) -> dict[Key, Callable[[], float]]:
    """Every configuration to run, by Row.key: the plain loop and the engine per kernel, the
    native reference, and the peers (their pools made in ``pools``, when given) per thread count."""
    runs: dict[Key, Callable[[], float]] = {}
    for kernel, work in load.works.items():
        runs[("plain", "(0)", kernel, 0)] = functools.partial(plain_run, load, kernel)
        for count in counts:
            runs[("padata_mp", "padata_mp", kernel, count)] = functools.partial(
                _engine_run, work, load.nodes, engine, count
            )
    peer_kernel = next(iter(load.works))  # the peers run load.work: the first kernel's
    for count in counts:
        if program and load.machine:
            for kernel, name in (("c", NATIVE), ("c-stream", NATIVE_STREAM)):
                if kernel in load.works:  # a reference for each C kernel measured
                    runs[("native", name, kernel, count)] = functools.partial(
                        native.native_init, program, load.machine, count, kernel == "c-stream"
                    )
        made = peers(load.shared_arrays, count, pools) if pools is not None else {}
        for name, mapper in made.items():
            runs[("peer", name, peer_kernel, count)] = functools.partial(
                peer_run, load.work, load.nodes, count, mapper, engine
            )
    return runs


def rounds(
    load: Workload, runs: dict[Key, Callable[[], float]], repeat: int, phases: dict[str, float]
) -> dict[Key, list[float]]:
    """Every configuration once per round, ``repeat`` rounds, so drift in a shared machine's speed
    falls on all of them alike, and each round starting one configuration later, so whatever comes
    of running after another (caches, the previous verify) does not always fall on the same one.
    Each run from the job's starting state, verified after.  ms."""
    times: dict[Key, list[float]] = {key: [] for key in runs}
    keys = list(runs)
    began = time.perf_counter()
    for round_ in range(repeat):
        left = ""
        if round_:
            per_round = (time.perf_counter() - began) / round_
            left = f", about {per_round * (repeat - round_):.0f} s left"
        progress(f"round {round_ + 1}/{repeat}: {len(runs)} configurations{left}")
        shift = round_ % len(keys)
        for key in keys[shift:] + keys[:shift]:
            if key[0] == "ceiling":  # a pattern stored over the block: nothing to restore or prove
                times[key].append(runs[key]())
                continue
            load.restore()
            times[key].append(runs[key]())
            verified = time.perf_counter()
            load.work.verify()
            phases["verify"] = time.perf_counter() - verified
    return times


def machine_info(topology: Topology) -> dict[str, Any]:
    """What the figures depend on: CPU, its frequency and governor where readable, the load when
    the run started, kernel, THP, Python, numpy, and the git commit when run from a checkout."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mhz = [
        float(line.split(":")[1])
        for line in _read("/proc/cpuinfo").splitlines()
        if line.startswith("cpu MHz")
    ]
    return {
        "cpu_model": model,
        "cpu_mhz": max(mhz) if mhz else None,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "load_average": list(os.getloadavg()),
        "cores": os.cpu_count(),
        "usable_cpus": topology.cpu_limit,
        "topology": topology.source,
        "nodes": [{"node": n.id, "cpus": list(n.cpus), "mem_bytes": n.mem_bytes} for n in topology.nodes],
        "kernel": platform.release(),
        "thp": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "thp_shmem": _read("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "git_commit": _git_commit(),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "unknown"


def _git_commit() -> str | None:
    """HEAD of the checkout this package runs from (with "+dirty" for local changes); None when
    installed, or where git is not to be had."""
    top = Path(__file__).resolve().parents[2]
    if not (top / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(top), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(top), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
