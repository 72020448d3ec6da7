"""The engine: padata_do_multithreaded() on a persistent pool of pinned worker processes.

Three modules, split by who runs the code, as CPython's concurrent/futures/process.py is:
this one (the pool: public API, workers' lifecycle, the watcher), running.py (one running job:
share, collect, verdict, retry, undo) and worker.py (messages, the cursor, the claim loop and a
worker's main).  A job's way through them::

    do_multithreaded(job) / submit(job)                      [the caller's thread]
      │ kernel_nworks; idle helpers (round-robin over nodes when numa_aware),
      │ a free slot and a new generation: one RunningJob owns them all
      ▼
    RunningJob.run ── RunJob(slot, generation, payload) ──► worker_main ─► claim_chunks ─┐
      │ the caller claims too ─────────────────────────────► claim_chunks ─► cursor[slot] ◄┘
      │ ◄── JobDone(generation, starts, busy_s, failure) from each helper, or its death
      │     (the watcher thread sees a death at once and stops the job's claims)
      ▼
    give back: helpers idle (dead ones replaced), slot free ──► JobReport, or a PadataError
    naming the ranges not done (retry re-runs them; undo_fn undoes the rest)

A job returns, or raises, only when every helper it was given has replied or is dead and reaped:
nothing of it runs after the call.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import itertools
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import signal
import sys
import threading
import time

from . import shm
from .checks import integer
from .errors import BadTypeError, BadValueError, JobFailedError, PadataError, WorkerDiedError
from .interrupts import deferred_interrupts
from .job import LOAD_BALANCE_FACTOR, MtJob, kernel_nworks, pickled_call, plan
from .ranges import Ranges
from .running import (
    CALLER,
    DRAIN_TIMEOUT_S,
    Helper,
    JobFuture,
    JobReport,
    RunningJob,
    call_in_caller,
    dead_among,
    exchange,
    run_with_retry,
    undo,
)
from .topology import Topology, pin_thread, read_topology
from .worker import Attach, Attached, Cursor, Detach, Exit, Ready, worker_main

__all__ = ["CALLER", "JobReport", "Padata", "default_engine", "do_multithreaded"]

START_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 5.0
# Attaching pre-faults every page (about 0.2 s per GiB here): the bound on an attach grows with it.
ATTACH_S_PER_GIB = 1.0


class Padata:
    """A persistent pool of worker processes, pinned per NUMA node, that runs MtJobs.

    ``workers`` defaults to one per CPU of the topology; with that default a job is handed at most
    one helper fewer than the CPUs of its scope (the node, or the machine), so with its caller no
    more processes work at once than there are CPUs.  ``start_method`` defaults to forkserver with
    numpy preloaded (docs/design.md says why).  ``load_balance_factor`` is the kernel's 4 chunks per
    process; raise it to trade per-chunk overhead for balance.  ``reply_timeout`` is how long a
    worker that has nothing to do may take to answer (attach adds time per GiB) before it is
    treated as dead: killed, replaced, and a RuntimeWarning says so; a chunk itself may take as long
    as it takes.  Use it as a context manager, or call ``close()``.
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
        load_balance_factor = integer("load_balance_factor", load_balance_factor, 1)
        if (
            isinstance(reply_timeout, bool)
            or not isinstance(reply_timeout, int | float)
            or reply_timeout <= 0
        ):
            raise BadValueError(f"reply_timeout must be a number of seconds > 0, got {reply_timeout!r}")
        self.load_balance_factor = load_balance_factor
        self.reply_timeout = float(reply_timeout)
        self._cap_to_cpus = workers is None
        nworkers = self.topology.default_workers() if workers is None else workers
        method = start_method or "forkserver"
        if method not in multiprocessing.get_all_start_methods():
            raise BadValueError(
                f"start_method must be one of {multiprocessing.get_all_start_methods()}, got {method!r}"
            )
        self.start_method = method
        self._ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            self._ctx.set_forkserver_preload(["numpy", "padata_mp.pool"])
            _start_forkserver()
        shm.sweep_dead_owners()
        self._lock = threading.Lock()
        self._jobs_done = threading.Condition(self._lock)  # notified when a running job ends
        self._closed = False
        self._watching = True
        self._rr_node = 0  # numa_aware round-robin position, kept across jobs as the kernel does
        self._generations = itertools.count(1)  # worker.STOPPED (0) is never a job's
        self._running: set[RunningJob] = set()
        # Ctrl-C waits while the cursors' locks are made: one landing between a named semaphore's
        # creation and its finaliser's would leave it for the resource tracker to find leaked.
        with deferred_interrupts():
            self._cursors = [self._ctx.Value(Cursor, lock=self._ctx.Lock()) for _ in range(nworkers)]
        # Chunk each claimant holds now, (start, end), end == start when none: workers, then the
        # callers of each slot.
        self._held = self._ctx.RawArray(ctypes.c_int64, 2 * 2 * nworkers)
        self._free_slots = list(range(nworkers))
        self._workers: list[Helper] = []
        self._wake_r, self._wake_w = os.pipe()
        try:
            self._workers = self._start_workers(self.topology.place(nworkers))
        except BaseException:
            self.close()
            raise
        self._remove_hook = shm.on_unlink(self._detach_everywhere)
        self._watcher = threading.Thread(target=self._watch, name="padata-watch", daemon=True)
        self._watcher.start()

    # -- public -----------------------------------------------------------------------------

    @property
    def workers(self) -> list[tuple[int, int, int]]:
        """``(worker_id, pid, node)`` of each worker process."""
        return [(w.wid, w.process.pid, w.node) for w in self._workers]

    def do_multithreaded(self, job: MtJob, node: int | None = None) -> JobReport:
        """Run ``job`` to completion; the calling thread works as the job's caller.

        ``node`` restricts helpers to that node's workers.  Returns once every index is done; else
        raises, once every helper has stopped, JobFailedError (thread_fn raised or returned an
        error code, or could not be loaded in a worker), WorkerDiedError (a helper died holding
        work) or PadataError (the engine was closed), each listing the ranges not done; the engine
        stays usable.  A job with ``retry=True`` has the ranges a dead helper left re-run instead
        (up to MAX_RETRIES times); a job with an ``undo_fn`` has every completed range undone
        before the error is raised.  A helper lost while holding nothing costs the job nothing.
        """
        return self._do(job, node, caller_in_worker=False)

    def submit(self, job: MtJob, node: int | None = None) -> JobFuture:
        """Start ``job`` and return a Future of its JobReport, so several jobs, one per node as
        deferred init does, run at once; its ``progress()`` says how much of the range has been
        claimed and done.  The job's caller is one of its node's workers, as the kernel's
        pgdatinit is a thread bound to its node: jobs on different nodes then share no interpreter
        lock.  With no worker free, a thread of this process (bound to the node's CPUs) is the
        caller."""
        _check_job(job)
        if node is not None:
            node = self._check_node(node)
        future = JobFuture(job.size)

        def run() -> None:
            if node is not None:
                pin_thread(self.topology.node(node).cpus)
            try:
                future.set_result(self._do(job, node, True, future))
            except BaseException as exc:
                future.set_exception(exc)

        future.set_running_or_notify_cancel()
        threading.Thread(target=run, name=f"padata-job-node{node}", daemon=True).start()
        return future

    def attach(self, *arrays: shm.SharedArray) -> dict[int, float]:
        """Map and pre-fault ``arrays`` in every idle worker now, so no job pays for it; returns
        each worker's seconds.  Busy workers, and replacements of dead ones, attach on first use;
        a worker that does not answer in time is replaced and left out."""
        self._check_open()
        gib = sum(math.prod(a.shape) * a.dtype.itemsize for a in arrays) / 2**30
        idle, answers = self._hold_idle("attach"), {}
        try:
            answers = exchange(idle, Attach(list(arrays)), self.reply_timeout + ATTACH_S_PER_GIB * gib)
        finally:
            # Cut short (Ctrl-C), an exchange has no answers: nobody is taken for dead.
            self._give_back(
                idle, [w for w in idle if w.wid in answers and not isinstance(answers[w.wid], Attached)]
            )
        return {wid: a.seconds for wid, a in answers.items() if isinstance(a, Attached)}

    def close(self, timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Stop every worker.  A job running now is stopped and raises PadataError ("engine
        closed") with its ranges not done; its helpers get ``timeout`` seconds to finish their
        chunk, then are killed.  Idempotent; Ctrl-C waits until this is done."""
        with deferred_interrupts():
            self._close(timeout)

    def __enter__(self) -> Padata:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # Left by Ctrl-C (or SystemExit): the work is moot, so busy workers are killed at once.
        interrupted = exc_type is not None and not issubclass(exc_type, Exception)
        self.close(0.0 if interrupted else DRAIN_TIMEOUT_S)

    # -- a job ------------------------------------------------------------------------------

    def _do(
        self, job: MtJob, node: int | None, caller_in_worker: bool, future: JobFuture | None = None
    ) -> JobReport:
        _check_job(job)
        if node is not None:
            node = self._check_node(node)
        payload = pickled_call(job)
        self._check_open()
        began = time.perf_counter()
        if job.size == 0:
            return JobReport(0, 0, [], 0.0)
        run_range = functools.partial(self._run_range, node, caller_in_worker, future)
        report, failure = run_with_retry(job, payload, run_range)
        if isinstance(failure, (JobFailedError, WorkerDiedError)) and job.undo_fn is not None:
            undo(job, failure, run_range)
        report.elapsed_s = time.perf_counter() - began
        if failure:
            raise failure
        return report

    def _run_range(
        self,
        node: int | None,
        caller_in_worker: bool,
        future: JobFuture | None,
        job: MtJob,
        payload: bytes,
        start: int,
        end: int,
        chunk: int | None,
        also_not_done: Ranges,
    ) -> tuple[JobReport, PadataError | None]:
        """Run [start, end) of ``job``: with helpers, chunk by chunk (``chunk`` None: the kernel's
        size for the processes got), else one call in the calling thread.  ``caller_in_worker``:
        a worker plays the caller, and the calling thread only waits.  Returns what was done and
        the failure, if any, whose ranges not done include ``also_not_done``."""
        running = self._start_job(job, payload, node, caller_in_worker, (start, end), chunk)
        if future is not None:
            future.track(running)
        try:
            if running is None:
                # One call with the whole range, in the caller: no chunking, no locking.  (With no
                # helper free the kernel still chunks; one process gains nothing from it.)
                return call_in_caller(job, start, end, also_not_done)
            try:
                running.run()
                failure = running.failure(also_not_done)
            finally:
                self._end_job(running)
            return running.report(), failure
        finally:
            if future is not None:
                future.track(None, end - start)

    def _start_job(
        self,
        job: MtJob,
        payload: bytes,
        node: int | None,
        caller_in_worker: bool,
        span: tuple[int, int],
        chunk: int | None,
    ) -> RunningJob | None:
        """Take the job's helpers, a slot and a generation; None when no helper is to be had."""
        wanted = kernel_nworks(job) - 1 + caller_in_worker
        if not wanted:
            return None
        with self._lock:
            self._check_open()
            if self._cap_to_cpus:  # with the caller, no more processes than CPUs
                cpus = len(self.topology.node(node).cpus) if node is not None else self.topology.cpu_limit
                wanted = min(wanted, cpus - (not caller_in_worker))
            idle = [w for w in self._workers if w.owner is None and (node is None or w.node == node)]
            gone = dead_among(idle)
            idle = [self._replace(w) if w in gone else w for w in idle]
            idle = [w for w in idle if not w.dead]
            helpers = self._round_robin(idle, wanted) if job.numa_aware and node is None else idle[:wanted]
            if not helpers:
                return None
            nworks = len(helpers) + (not caller_in_worker)
            if chunk is None:
                chunk = plan(job, nworks, load_balance_factor=self.load_balance_factor).chunk_size
            # A lone worker as the caller makes one call with the whole range, like a caller: a
            # claim size of ``end`` makes its one claim [start, end).
            claim_size = span[1] if nworks == 1 else chunk
            slot = self._free_slots.pop()
            running = RunningJob(
                job,
                payload,
                helpers,
                self._cursors[slot],
                slot,
                next(self._generations),
                self._held,
                len(self._workers) + slot,
                span,
                chunk,
                claim_size,
                not caller_in_worker,
                self.reply_timeout,
            )
            for w in helpers:
                w.owner = running
                self._held[2 * w.wid + 1] = self._held[2 * w.wid]
            self._running.add(running)
            return running

    def _end_job(self, running: RunningJob) -> None:
        # Its helpers are all accounted for: the slot is free before they are, so a job that gets
        # helpers always finds a slot.
        with self._lock:
            self._free_slots.append(running.slot)
        self._give_back(running.helpers, [*running.lost, *running.unresponsive])
        with self._lock:
            self._running.discard(running)
            self._jobs_done.notify_all()

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

    # -- workers' lifecycle -----------------------------------------------------------------

    def _hold_idle(self, why: str) -> list[Helper]:
        """The idle live workers, held for an exchange (``why``) so no job takes them meanwhile."""
        with self._lock:
            idle = [w for w in self._workers if w.owner is None and not w.dead]
            for w in idle:
                w.owner = why
            return idle

    def _give_back(self, helpers: list[Helper], dead: list[Helper]) -> None:
        """Helpers a job or an exchange held become idle again: blocks unlinked meanwhile are
        unmapped first, and the ``dead`` are replaced (the pool is closing: their pipes closed)."""
        while True:
            with self._lock:
                todo = {w: w.pending_detach for w in helpers if w.pending_detach and w not in dead}
                for w in todo:
                    w.pending_detach = []
                if not todo or self._closed:
                    for w in helpers:
                        w.owner = None
                        if self._closed:
                            w.conn.close()
                        elif w in dead:
                            self._replace(w)
                    return
            for w, names in todo.items():
                for name in names:
                    if exchange([w], Detach(name), self.reply_timeout)[w.wid] is None:
                        dead.append(w)
                        break

    def _replace(self, dead: Helper) -> Helper:
        """Start a new worker in a dead one's place (same id and node); with the lock held.  If it
        cannot start now, the dead one stays, marked, and is replaced when next wanted."""
        dead.dead = True
        dead.conn.close()
        dead.process.join(0)
        try:
            new = self._start_workers([dead.node], first_id=dead.wid)[0]
        except PadataError:
            return dead
        self._workers[dead.wid] = new
        os.write(self._wake_w, b"x")  # the watcher must wait on the new sentinel
        return new

    def _start_workers(self, nodes: list[int], first_id: int = 0) -> list[Helper]:
        started: list[Helper] = []
        try:
            for wid, nid in enumerate(nodes, start=first_id):
                ours, theirs = self._ctx.Pipe()
                cpus = self.topology.node(nid).cpus
                args = (wid, cpus, theirs, self._cursors, self._held, os.getpid())
                proc = self._ctx.Process(target=worker_main, args=args, name=f"padata-{wid}", daemon=True)
                # Ctrl-C waits while a process starts: one that exists but is not in ``started``
                # would live on, and fail loudly to open the cursors this cleanup removes.
                with deferred_interrupts():
                    proc.start()
                    started.append(Helper(wid, nid, proc, ours))
                theirs.close()
            for w in started:
                if not w.conn.poll(START_TIMEOUT_S):
                    raise PadataError(f"worker {w.wid} did not start within {START_TIMEOUT_S:.0f} s")
                if not isinstance(w.receive(), Ready):
                    raise PadataError(f"worker {w.wid} died while starting ({w.how_it_died()})")
        except BaseException:
            for w in started:
                w.kill()
                w.conn.close()
            raise
        return started

    def _watch(self) -> None:
        """Stop a job's claims the moment one of its helpers dies."""
        while True:
            with self._lock:
                if not self._watching:
                    return
                alive = {w.process.sentinel: w for w in self._workers if not w.dead}
            ready = multiprocessing.connection.wait([self._wake_r, *alive])
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            with self._lock:
                dead = [alive[s] for s in ready if s in alive]
                for w in dead:
                    w.dead = True
                jobs = [(w, w.owner) for w in dead if isinstance(w.owner, RunningJob)]
            for w, running in jobs:  # unlocked: stopping may wait out a dead claimant's lock
                running.stop_for_death(w)

    def _detach_everywhere(self, name: str) -> None:
        """A block was unlinked: idle workers unmap it now, busy ones when they are given back."""
        with self._lock:
            for w in self._workers:
                if w.owner is not None:
                    w.pending_detach.append(name)
        idle, answers = self._hold_idle("detach"), {}
        try:
            answers = exchange(idle, Detach(name), self.reply_timeout)
        finally:
            self._give_back(idle, [w for w in idle if w.wid in answers and answers[w.wid] is None])

    def _close(self, timeout: float) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = list(self._running)
            for r in running:
                r.closed = True
        for r in running:
            r.stop()
        if hasattr(self, "_remove_hook"):
            self._remove_hook()
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._running and time.monotonic() < deadline:
                self._jobs_done.wait(max(0.0, deadline - time.monotonic()))
            # Helpers still in a job are killed; that job ends, and closes their pipes.
            held = [w for w in self._workers if w.owner is not None]
            idle = [w for w in self._workers if w.owner is None]
        for w in held:
            w.process.kill()
        for w in idle:
            w.send(Exit())
        for w in idle:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.kill()
            w.conn.close()
        with self._lock:
            self._watching = False
        os.write(self._wake_w, b"x")
        if hasattr(self, "_watcher"):
            self._watcher.join()
        os.close(self._wake_r)
        os.close(self._wake_w)
        # The cursors' locks are named semaphores in /dev/shm until their last reference goes.
        self._workers, self._cursors = [], []

    def _check_node(self, node: int) -> int:
        ids = [n.id for n in self.topology.nodes_with_cpus]
        node = integer("node", node)
        if node not in ids:
            raise BadValueError(f"node must be one of the nodes with CPUs {ids}, got {node}")
        return node

    def _check_open(self) -> None:
        if self._closed:
            raise PadataError("this Padata engine is closed")


def _check_job(job: object) -> None:
    if not isinstance(job, MtJob):
        raise BadTypeError(f"job must be an MtJob, got {type(job).__name__}")


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
