"""Running a memory-proportional job per simulated node, all nodes at once, as the kernel runs
deferred init: what deferred init, the other kernel jobs and the benchmark share."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..checks import integer
from ..interrupts import gate
from ..job import MtJob
from ..pool import JobReport, Padata, default_engine
from ..ranges import Ranges
from ..running import JobFuture, Progress, stop_all
from ..shm import SharedArray

log = logging.getLogger("padata_mp.mm")
PROGRESS_S = 0.25


class NodeWork(Protocol):
    """A memory-proportional job of the simulated machine, run as one padata job per node.

    ``begin`` does the coordinator's part before the jobs (checks, taking blocks off the free
    lists) and returns each simulated node's job; ``end(node)`` does its part after that node's job
    (splicing what the chunks freed into the zone's lists).  Both count in the work's time.
    ``verify`` proves the result.  ``pages`` is the work's size in pages and ``bytes_per_page``
    what it writes per page, for rates.  Going back to the starting state, to run again, is each
    work's own business (Machine.reset or save_state/restore_state, a device's, file's or
    mapping's reset)."""

    @property
    def pages(self) -> int: ...

    @property
    def bytes_per_page(self) -> int: ...

    def begin(self, threads: dict[int, int]) -> dict[int, MtJob]: ...

    def end(self, node: int) -> None: ...

    def verify(self) -> object: ...


@dataclass
class NodeRun:
    """What a NodeWork run did: per node, milliseconds (its job and its ``end``) and the job's
    report; ``elapsed_ms`` from ``begin`` to the last ``end``, the kernel's "slowest node" figure.
    ``attach_ms``: mapping the work's blocks in the workers first, apart from the job's time;
    ``kernel``: the chunk kernel that ran, for the works that have several."""

    node_ms: dict[int, float]
    reports: dict[int, JobReport] = field(default_factory=dict)
    elapsed_ms: float = 0.0
    pages: int = 0
    retried: dict[int, Ranges] = field(default_factory=dict)  # re-run after a helper died
    attach_ms: float = 0.0
    kernel: str = ""


def _fraction(progress: list[Progress]) -> float:
    size = sum(p.size for p in progress)
    return sum(p.done for p in progress) / size if size else 1.0


def node_threads(engine: Padata, nodes: Sequence[int], threads: int | None) -> dict[int, int]:
    """Per simulated node, its job's max_threads: ``threads``, or the CPUs of the engine node that
    hosts it (simulated node k on engine node k modulo the engine's nodes)."""
    if threads is not None:
        threads = integer("threads", threads, 1)
    hosts = engine.topology.nodes_with_cpus
    return {k: threads or len(hosts[k % len(hosts)].cpus) for k in nodes}


def run_work(
    work: NodeWork,
    nodes: Sequence[int],
    engine: Padata | None = None,
    threads: int | None = None,
    on_progress: Callable[[float], None] | None = None,
    arrays: Sequence[SharedArray] = (),
) -> NodeRun:
    """Run ``work`` on the simulated ``nodes`` it spans: every node's job at once, each with its
    helpers (and its caller) on the engine node hosting it.  Raises the first node's error once
    every node has stopped; on Ctrl-C (or any error in this thread) every node's job is cancelled
    and waited for first, so nothing of the work runs after the raise.  ``on_progress(fraction)``
    is called about every PROGRESS_S while the jobs run (the fraction of their indices done), and
    with 1.0 at the end.

    Without ``on_progress``, the calling thread is the caller of the last node's job, as the
    kernel's caller works too, where every CPU it may run on is that job's host node's (always on
    a one-node host): a job of one call then runs right here, with no process hop, and the
    others are submitted.  With ``on_progress`` every job is submitted and this thread reports.
    ``arrays`` are attached in every idle worker first, timed apart (``attach_ms``)."""
    engine = engine or default_engine()
    attach_began = time.perf_counter()
    if arrays:
        engine.attach(*arrays)
    attach_ms = (time.perf_counter() - attach_began) * 1e3
    hosts = engine.topology.nodes_with_cpus
    began = time.perf_counter()
    jobs = work.begin(node_threads(engine, nodes, threads))
    # A numa_aware job spreads its own helpers over the nodes; others stay on their host node.
    host = {
        node: None if job.numa_aware or len(hosts) == 1 else hosts[node % len(hosts)].id
        for node, job in jobs.items()
    }
    here = _caller_here(engine, jobs, host) if on_progress is None else None
    reports: dict[int, JobReport] = {}
    with gate() as g:  # Ctrl-C: every node's job stopped and accounted for before it propagates
        futures: dict[int, JobFuture] = {}
        ended = queue.SimpleQueue[None]()  # waited on in C: a Ctrl-C leaves no lock held
        try:
            with g.raised():
                for node, job in jobs.items():
                    if node != here:
                        futures[node] = engine.submit(job, node=host[node])
                        futures[node].add_done_callback(lambda _: ended.put(None))
            if here is not None:
                reports[here] = engine.do_multithreaded(jobs[here], node=host[here])
            while not all(f.done() for f in futures.values()):
                with contextlib.suppress(queue.Empty):
                    ended.get(timeout=PROGRESS_S)
                if on_progress is not None:
                    on_progress(_fraction([f.progress() for f in futures.values()]))
        except BaseException:
            with g.raised():
                stop_all(futures.values())
            raise
    if on_progress is not None:
        on_progress(1.0)
    reports.update((node, future.result()) for node, future in futures.items())  # the first error
    run = NodeRun({}, pages=work.pages, attach_ms=attach_ms)
    for node in jobs:
        report = run.reports[node] = reports[node]
        began_end = time.perf_counter()
        work.end(node)
        if report.retried:
            run.retried[node] = report.retried
            log.warning("node %d: a helper died; re-ran %s", node, report.retried)
        run.node_ms[node] = (report.elapsed_s + time.perf_counter() - began_end) * 1e3
    run.elapsed_ms = (time.perf_counter() - began) * 1e3
    return run


def _caller_here(engine: Padata, jobs: dict[int, MtJob], host: dict[int, int | None]) -> int | None:
    """The last simulated node whose job this thread can call for without leaving its host node:
    every CPU this thread may run on belongs to that node (any node, on a one-node host).  A
    numa_aware job on several nodes is dealt over them all, its caller included: never here."""
    allowed, one_node = os.sched_getaffinity(0), len(engine.topology.nodes_with_cpus) == 1
    for node in reversed(list(jobs)):
        host_node = host[node]
        if one_node or (host_node is not None and allowed <= set(engine.topology.node(host_node).cpus)):
            return node
    return None
