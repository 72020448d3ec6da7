"""The engine's public face: ``Padata``, padata_do_multithreaded() on a persistent pool of pinned
worker processes.  The engine's one data-flow diagram, by the process and thread that run each part:

    do_multithreaded(job) / submit(job)               [the caller's thread, under the SIGINT gate]
      │ pool.py: admission - kernel_nworks, idle helpers lent by the Manager (round-robin over
      │ nodes when numa_aware), a free slot, a new generation: one RunningJob owns them all
      ▼
    RunningJob.run (running.py) ── RunJob, pickled once ──► helpers: worker_main ─► claim_chunks
      │ the caller claims too: claim_chunks (worker.py) ──► cursor[slot] ◄── every claimant
      │                                                                      │ JobDone, or death
      ◄── JobDone: the caller reads its helpers' pipes itself while it waits ┤
      │        the manager thread (manager.py) waits on every sentinel and every other pipe
      ◄── deliver(helper, None): a death, after its last words ─────────────┘
      │ the verdict, once every helper has replied or died; what helpers that died holding
      │ nothing left unclaimed, the caller's side claims itself
      ▼
    pool.py: retry=True runs the ranges dead helpers left again; undo_fn undoes what completed
      ▼
    JobReport, or a PadataError naming the ranges not done

Calls go one way, pool -> running job -> worker; the manager calls back only into what a worker is
lent to.  A call returns, or raises, only when every helper it was given has replied or is dead:
nothing of it runs after the call.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import math
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import threading
import time
import warnings
import weakref
from dataclasses import replace
from typing import Any

from . import mutex, shm
from .checks import integer, seconds
from .errors import (
    BadTypeError,
    BadValueError,
    JobFailedError,
    PadataError,
    WorkerDiedError,
)
from .interrupts import Gate, deferred_interrupts, gate
from .job import LOAD_BALANCE_FACTOR, MtJob, kernel_nworks, pickled_call, plan, undo_job
from .manager import READY, START_TIMEOUT_S, Exchange, Helper, Manager
from .ranges import Ranges, merge_ranges, subtract_ranges
from .running import (
    CALLER,
    DRAIN_TIMEOUT_S,
    JobCancelledError,
    JobFuture,
    JobReport,
    RunningJob,
    call_in_caller,
    stop_all,
)
from .topology import Topology, pin_thread, read_topology
from .worker import Attach, Attached, Claims, Cursor, Detach, Slot

__all__ = ["CALLER", "JobReport", "Padata", "default_engine", "do_multithreaded"]

REPLY_TIMEOUT_S = 5.0
# Attaching pre-faults every page (about 0.2 s per GiB here): the bound on an attach grows with it.
ATTACH_S_PER_GIB = 1.0
MAX_RETRIES = 3  # rounds of re-running what dead helpers left, for jobs with retry=True


class Padata:
    """A persistent pool of worker processes, pinned per NUMA node, that runs MtJobs.

    ``workers`` defaults to one per CPU of the topology; with that default a job is handed at most
    one helper fewer than the CPUs of its scope (the node, or the machine), so with its caller no
    more processes work at once than there are CPUs.  ``start_method`` defaults to forkserver with
    numpy preloaded (docs/design.md says why).  ``load_balance_factor`` is the kernel's 4 chunks per
    process; raise it to trade per-chunk overhead for balance.  ``reply_timeout`` is how long a
    worker that has nothing to do may take to answer (attach adds time per GiB) before it is
    treated as dead: killed, replaced, and a RuntimeWarning says so; a chunk itself may take as long
    as it takes.  Use it as a context manager, or call ``close()``; an engine dropped unclosed is
    closed when collected, with a ResourceWarning, as an unclosed file is.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        topology: Topology | None = None,
        start_method: str | None = None,
        load_balance_factor: int = LOAD_BALANCE_FACTOR,
        reply_timeout: float = REPLY_TIMEOUT_S,
    ):
        if not sys.platform.startswith("linux"):
            raise PadataError(
                f"padata_mp runs on Linux only (sched_setaffinity, /dev/shm, MADV_POPULATE_WRITE); "
                f"this is {sys.platform}"
            )
        self.topology = topology or read_topology()
        if workers is not None:
            workers = integer("workers", workers, 1)
        self.load_balance_factor = integer("load_balance_factor", load_balance_factor, 1)
        self.reply_timeout = seconds("reply_timeout", reply_timeout)
        self._cap_to_cpus = workers is None
        nworkers = self.topology.default_workers() if workers is None else workers
        self.start_method, ctx = _context(start_method or "forkserver")
        # Ctrl-C is held until the engine is made (or closed again): raised in code of our own, it
        # cannot land in a finaliser of multiprocessing's and be lost there.
        with deferred_interrupts() as held:
            shm.sweep_dead_owners()
            self._closed = False
            self._rr_node = 0  # numa_aware round-robin position, kept across jobs as the kernel does
            self._generations = itertools.count(1)  # worker.STOPPED (0) is never a job's
            self._running: set[RunningJob] = set()
            # One cursor a slot, each with its robust mutex, and the chunk each claimant holds
            # (workers first, then each slot's caller), all in shared memory.
            cursors = ctx.RawArray(Cursor, nworkers)
            for cursor in cursors:
                mutex.init(ctypes.addressof(cursor))
            claims = ctx.RawArray(ctypes.c_int64, 2 * 2 * nworkers)
            self._slots = [Slot(i, c, Claims(claims), nworkers + i) for i, c in enumerate(cursors)]
            self._free_slots = list(range(nworkers))
            args = (cursors, claims, os.getpid())
            self._manager = Manager(
                ctx, self.topology, self.topology.place(nworkers), args, START_TIMEOUT_S, self.reply_timeout
            )
            self._lock = self._manager.lock  # admission, slots, running jobs: one lock with the workers'
            self._jobs_done = threading.Condition(self._lock)  # notified when a running job ends
            detach = weakref.WeakMethod(self._detach_everywhere)  # a dropped engine is not kept alive
            self._remove_hook = shm.on_unlink(lambda name: (bound := detach()) and bound(name))
            self._finalizer = weakref.finalize(self, _abandoned, self._manager, self._remove_hook)
            if held:
                self._close(0.0)

    # -- public -----------------------------------------------------------------------------

    @property
    def workers(self) -> list[tuple[int, int, int]]:
        """``(worker_id, pid, node)`` of each worker process in service: one that died or was killed
        is left out at once, and its replacement, started in the background, listed once ready."""
        with self._lock:
            return [
                (w.wid, w.process.pid, w.node)
                for w in self._manager.workers
                if w.state == READY and not w.doomed
            ]

    def do_multithreaded(self, job: MtJob, node: int | None = None) -> JobReport:
        """Run ``job`` to completion; the calling thread works as the job's caller.

        ``node`` restricts helpers to that node's workers.  Returns once every index is done; else
        raises, once every helper has stopped, JobFailedError (thread_fn raised or returned an
        error code, or could not be loaded in a worker), WorkerDiedError (a helper died holding
        work) or EngineClosedError, each listing the ranges not done; the engine stays usable.  A
        job with ``retry=True`` has the ranges a dead helper left re-run instead (up to
        MAX_RETRIES times); a job with an ``undo_fn`` has every completed range undone before the
        error is raised (not the chunk a dead helper held: what it did there is unknown).  A helper
        lost while holding nothing costs the job nothing: what it would have claimed, the others
        (or the caller) do.  Ctrl-C stops the helpers, waits for them (at most DRAIN_TIMEOUT_S,
        then kills them) and raises KeyboardInterrupt: after that nothing of the job runs.
        """
        return self._do(job, node, caller_works=True)

    def submit(self, job: MtJob, node: int | None = None) -> JobFuture:
        """Start ``job`` and return a Future of its JobReport, so several jobs, one per node as
        deferred init does, run at once; its ``progress()`` says how much of the range has been
        claimed and done, its ``cancel()`` stops it.  The job's caller is one of its node's
        workers, as the kernel's pgdatinit is a thread bound to its node: jobs on different nodes
        then share no interpreter lock.  With no worker free, a thread of this process (bound to
        the node's CPUs) is the caller; it also finishes what helpers that died holding nothing
        left."""
        _check_job(job)
        if node is not None:
            node = self._check_node(node)
        self._check_open()
        future = JobFuture(job.size)

        def run() -> None:
            if node is not None:
                pin_thread(self.topology.node(node).cpus)
            try:
                report = self._do(job, node, False, future)
            except BaseException as exc:
                future.end(None, exc)
            else:
                future.end(report, None)

        thread = threading.Thread(target=run, name=f"padata-job-node{node}", daemon=True)
        try:
            with gate() as g, g.raised():  # Ctrl-C: raised once the job has started, then stopped
                future.set_running_or_notify_cancel()
                thread.start()
        except KeyboardInterrupt:
            if thread.is_alive() or future.done():
                stop_all([future])
            raise
        return future

    def attach(self, *arrays: shm.SharedArray) -> dict[int, float]:
        """Map and pre-fault ``arrays`` in every idle worker now, so no job pays for it; returns
        each worker's seconds.  Busy workers, and replacements of dead ones, attach on first use;
        a worker that does not answer in time is replaced and left out.  A block that does not
        exist (unlinked) raises PadataError naming it; the workers stay."""
        self._check_open()
        for a in arrays:
            if not isinstance(a, shm.SharedArray):
                raise BadTypeError(f"attach takes SharedArrays, got {type(a).__name__}")
            if not os.path.exists(os.path.join(shm.SHM_DIR, a.name)):
                raise PadataError(f"cannot attach {a.name}: no such block in {shm.SHM_DIR} (unlinked?)")
        gib = sum(math.prod(a.shape) * a.dtype.itemsize for a in arrays) / 2**30
        with gate() as g, g.raised():
            exchange = Exchange(
                self._manager, Attach(list(arrays)), self.reply_timeout + ATTACH_S_PER_GIB * gib
            )
        answers = exchange.wait()  # Ctrl-C leaves the exchange to finish in the manager
        attached = {wid: a for wid, a in answers.items() if isinstance(a, Attached)}
        failed = [a.failed for a in attached.values() if a.failed]
        if failed:
            raise PadataError(failed[0])
        return {wid: a.seconds for wid, a in attached.items()}

    def close(self, timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Stop every worker.  A job running now is stopped and raises EngineClosedError with its
        ranges not done; its helpers get ``timeout`` seconds to finish their chunk, then are
        killed.  Idempotent; Ctrl-C waits until this is done."""
        with deferred_interrupts():
            self._close(timeout)

    def __enter__(self) -> Padata:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # Left by Ctrl-C (or SystemExit): the work is moot, so busy workers are killed at once.
        interrupted = exc_type is not None and not issubclass(exc_type, Exception)
        self.close(0.0 if interrupted else DRAIN_TIMEOUT_S)

    def __repr__(self) -> str:
        nodes = sorted({w.node for w in self._manager.workers})
        state = "closed" if self._closed else f"open, {len(self._running)} jobs running"
        return f"<Padata {len(self._manager.workers)} workers on nodes {nodes}, {self.start_method}, {state}>"

    # -- a job ------------------------------------------------------------------------------

    def _do(
        self, job: MtJob, node: int | None, caller_works: bool, future: JobFuture | None = None
    ) -> JobReport:
        _check_job(job)
        if node is not None:
            node = self._check_node(node)
        if job.max_threads is None:
            job = replace(job, max_threads=self._cpus(node))
        payload = pickled_call(job)  # once for the whole call: every round and helper shares it
        self._check_open()
        began = time.perf_counter()
        if job.size == 0:
            return JobReport(0, 0, [], 0.0)
        with gate() as g:
            run = _Call(self, g, node, caller_works, future)
            report, failure = run.range(job, payload, job.start, job.end, None, [])
            for _ in range(MAX_RETRIES if job.retry else 0):
                if not isinstance(failure, WorkerDiedError):
                    break
                failure = run.again(job, payload, report, failure.not_done)
            if isinstance(failure, JobFailedError | WorkerDiedError) and job.undo_fn is not None:
                run.undo(job, failure)
        report.elapsed_s = time.perf_counter() - began
        if failure:
            raise failure
        return report

    def _admit(
        self,
        job: MtJob,
        payload: bytes,
        node: int | None,
        caller_works: bool,
        span: tuple[int, int],
        chunk: int | None,
    ) -> RunningJob | None:
        """Lend the job its helpers, a slot and a generation; None when no helper is to be had."""
        wanted = kernel_nworks(job) - caller_works  # a worker is the caller when the thread is not
        if not wanted:
            return None
        with self._lock:
            self._check_open()
            if self._cap_to_cpus:  # with the caller, no more processes than CPUs
                wanted = min(wanted, self._cpus(node) - caller_works)
            idle = self._manager.idle(node)
            helpers = self._round_robin(idle, wanted) if job.numa_aware and node is None else idle[:wanted]
            if not helpers:
                return None
            if chunk is None:
                nworks = len(helpers) + caller_works
                chunk = plan(job, nworks, load_balance_factor=self.load_balance_factor).chunk_size
            slot = self._slots[self._free_slots.pop()]
            generation = next(self._generations)
            running = RunningJob(
                job, payload, helpers, slot, generation, span, chunk, caller_works, self.reply_timeout
            )
            self._manager.lend(helpers, running, owner_reads=True)
            for index in [w.wid for w in helpers] + [slot.caller_index]:
                slot.claims.clear(index)
            self._running.add(running)
            return running

    def _release(self, running: RunningJob) -> None:
        # Its helpers are all accounted for: the slot is free before they are, so a job that gets
        # helpers always finds a slot.
        with self._lock:
            self._free_slots.append(running.slot.number)
            self._running.discard(running)
            self._jobs_done.notify_all()
        self._manager.give_back(running.helpers)

    def _round_robin(self, idle: list[Helper], count: int) -> list[Helper]:
        """Helpers dealt over the nodes with CPUs in turn, the position kept across jobs."""
        nodes = [n.id for n in self.topology.nodes_with_cpus]
        by_node = {nid: [w for w in idle if w.node == nid] for nid in nodes}
        picked: list[Helper] = []
        while len(picked) < count and any(by_node.values()):
            nid = nodes[self._rr_node % len(nodes)]
            self._rr_node += 1
            if by_node[nid]:
                picked.append(by_node[nid].pop(0))
        return picked

    # -- the rest ---------------------------------------------------------------------------

    def _detach_everywhere(self, name: str) -> None:
        """A block was unlinked: idle workers unmap it now, busy ones when they are given back."""
        if not self._closed:
            Exchange(self._manager, Detach(name), self.reply_timeout, busy_too=name).wait()

    def _close(self, timeout: float) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = list(self._running)
        for r in running:
            r.closed = True
            r.cancel()
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._running and time.monotonic() < deadline:
                self._jobs_done.wait(max(0.0, deadline - time.monotonic()))
        self._finalizer.detach()
        _abandoned(self._manager, self._remove_hook, max(0.0, deadline - time.monotonic()), warn=False)

    def _cpus(self, node: int | None) -> int:
        """The CPUs this engine has on ``node``, or in all."""
        return len(self.topology.node(node).cpus) if node is not None else self.topology.cpu_limit

    def _check_node(self, node: int) -> int:
        ids = [n.id for n in self.topology.nodes_with_cpus]
        node = integer("node", node)
        if node not in ids:
            raise BadValueError(f"node must be one of the nodes with CPUs {ids}, got {node}")
        return node

    def _check_open(self) -> None:
        if self._closed:
            raise PadataError("this Padata engine is closed")


class _Call:
    """One engine call's ranges, each a RunningJob (or one call in the caller): the first, the
    rounds of retry, the undo.  Loops of the caller's path, not callbacks into the pool."""

    def __init__(
        self, engine: Padata, g: Gate, node: int | None, caller_works: bool, future: JobFuture | None
    ):
        self.engine, self.gate, self.node = engine, g, node
        self.caller_works, self.future = caller_works, future

    def range(
        self, job: MtJob, payload: bytes, start: int, end: int, chunk: int | None, also_not_done: Ranges
    ) -> tuple[JobReport, PadataError | None]:
        """Run [start, end) of ``job``: with helpers, chunk by chunk (``chunk`` None: the kernel's
        size for the processes got), else one call in the calling thread.  Returns what was done
        and the failure, if any, whose ranges not done include ``also_not_done``."""
        future = self.future
        if future is not None and future.stopping:
            not_done = merge_ranges([(start, end), *also_not_done])
            return JobReport(0, 0, [], 0.0), JobCancelledError(
                f"the job was cancelled; ranges not done: {not_done}", not_done=not_done
            )
        running = None
        try:
            # Admission and give-back are one transaction: a Ctrl-C held while helpers are lent is
            # raised where the finally below gives them back.
            with self.gate.raised():
                running = self.engine._admit(job, payload, self.node, self.caller_works, (start, end), chunk)
                if future is not None:
                    future.track(running)
            if running is None:
                # One call with the whole range, in the caller: no chunking, no locking.  (With no
                # helper free the kernel still chunks; one process gains nothing from it.)
                return call_in_caller(job, start, end, also_not_done)
            running.run(self.gate)
            return running.report(), running.failure(also_not_done)  # read before the slot is free
        finally:
            if future is not None:
                future.track(None, end - start)
            if running is not None:
                with self.gate.raised():
                    self.engine._release(running)

    def again(self, job: MtJob, payload: bytes, report: JobReport, pending: Ranges) -> PadataError | None:
        """A retry round: each range of ``pending`` run again, with the first round's chunk size."""
        for i, (start, end) in enumerate(pending):
            part, failure = self.range(job, payload, start, end, report.chunk_size, pending[i + 1 :])
            report.chunks += part.chunks
            for wid, busy in part.busy_s.items():
                report.busy_s[wid] = report.busy_s.get(wid, 0.0) + busy
            report.retried.append((start, end))
            if failure:
                return failure
        return None

    def undo(self, job: MtJob, failure: JobFailedError | WorkerDiedError) -> None:
        """The RFC's undo: undo_fn over every range that completed, as jobs cut like the original.
        Everything claimed and not in ``not_done`` completed: helpers that did not fail finish the
        chunk they hold before they stop."""
        done = subtract_ranges((job.start, job.end), failure.not_done)
        payload = pickled_call(undo_job(job, job.start, job.end))  # (undo_fn, fn_arg): one for all
        for start, end in done:
            _, undo_failure = self.range(undo_job(job, start, end), payload, start, end, None, [])
            if undo_failure:
                raise PadataError(
                    f"undo_fn failed on [{start}, {end}) while undoing after: {failure}"
                ) from undo_failure
        failure.undone = done


def _abandoned(manager: Manager, remove_hook: Any, timeout: float = 0.0, warn: bool = True) -> None:
    """Stop the workers of an engine that is closing, or was dropped unclosed (then warned)."""
    if warn:
        warnings.warn(
            "padata_mp: a Padata engine was not closed; its workers are stopped now",
            ResourceWarning,
            stacklevel=1,
        )
    remove_hook()
    manager.close(timeout)


def _check_job(job: object) -> None:
    if not isinstance(job, MtJob):
        raise BadTypeError(f"job must be an MtJob, got {type(job).__name__}")


def _context(method: str) -> tuple[str, Any]:
    """The multiprocessing context of ``method``; forkserver's started now, numpy preloaded."""
    if method not in multiprocessing.get_all_start_methods():
        raise BadValueError(
            f"start_method must be one of {multiprocessing.get_all_start_methods()}, got {method!r}"
        )
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["numpy", "padata_mp.pool"])
        _start_forkserver()
    return method, ctx


_forkserver_started = False


def _start_forkserver() -> None:
    """Start the forkserver with SIGINT ignored: it keeps that disposition across exec and hands it
    to every worker from its first instruction, so a Ctrl-C during the server's first second (while
    it imports numpy) or a worker's start cannot print a traceback beside ours.  Ignored in this
    process too for those few milliseconds of fork and exec, once per interpreter: later engines
    find it running and change nothing, so no later Ctrl-C is lost.  Only the main thread may
    change signal handlers; elsewhere it starts as is."""
    global _forkserver_started
    if _forkserver_started or threading.current_thread() is not threading.main_thread():
        multiprocessing.forkserver.ensure_running()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
        _forkserver_started = True
    finally:
        signal.signal(signal.SIGINT, previous)


# -- the module-level engine -----------------------------------------------------------------

_default: Padata | None = None
_default_lock = threading.Lock()


def default_engine() -> Padata:
    """The engine behind module-level do_multithreaded(): made on first use, closed at exit."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = Padata()
            atexit.register(_default.close)
        return _default


def do_multithreaded(job: MtJob, node: int | None = None) -> JobReport:
    """``Padata.do_multithreaded`` on the default engine."""
    return default_engine().do_multithreaded(job, node)
