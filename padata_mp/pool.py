"""The engine: padata_do_multithreaded() on a persistent pool of pinned worker processes.

A job's caller works too, as in the kernel.  Helpers and caller claim chunks from one shared cursor
(a multiprocessing.Value under its lock), so each chunk ends on an absolute multiple of the chunk
size and every index is handed out once.  A watcher thread sees a helper die at once (process
sentinels) and stops the others claiming; dead helpers are replaced after the job.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import pickle
import signal
import threading
import time
import traceback
from array import array
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from . import shm
from .errors import JobFailedError, PadataError, WorkerDiedError, merge_ranges, subtract_ranges
from .job import (
    LOAD_BALANCE_FACTOR,
    MtJob,
    kernel_nworks,
    pickled_call,
    plan,
    undo_job,
)
from .topology import Topology, pin_process, pin_thread, read_topology

CALLER = -1  # worker id of the job's caller in reports
START_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 1.0  # how long helpers get to finish their chunk after Ctrl-C or close()
PARENT_CHECK_S = 0.5  # an idle worker checks this often that the coordinator is alive
MAX_RETRIES = 3  # rounds of re-running what dead helpers left, for jobs with retry=True


class _Cursor(ctypes.Structure):
    # The kernel uses the job itself as the cursor: start and size shrink as chunks are claimed.
    _fields_ = [
        ("start", ctypes.c_int64),
        ("size", ctypes.c_int64),
        ("chunk_size", ctypes.c_int64),
        ("abort", ctypes.c_int64),
        ("first_failed", ctypes.c_int64),  # 1 + the claimant index whose chunk failed first; 0: none
    ]


@dataclass
class JobReport:
    """What a job did.  ``nworks`` is the kernel's ps.nworks: helpers handed to the job plus the
    caller (fewer than asked for is legal).  ``chunks`` lists ``(start, end, worker_id)`` in no
    promised order, the caller's as CALLER (a helper that died takes its finished chunks' record
    with it); ``busy_s`` is the time each spent working on the job (claiming chunks and running
    them); ``retried`` lists the ranges re-run after a helper died (jobs with ``retry=True``)."""

    nworks: int
    chunk_size: int
    chunks: list[tuple[int, int, int]]
    elapsed_s: float
    busy_s: dict[int, float] = field(default_factory=dict)
    retried: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class _Worker:
    wid: int
    node: int
    proc: Any
    conn: Any
    slot: int | None = None  # the job slot it serves, None when idle
    dead: bool = False  # seen dead by the watcher
    pending_detach: list[str] = field(default_factory=list)


class Padata:
    """A persistent pool of worker processes, pinned per NUMA node, that runs MtJobs.

    ``workers`` defaults to one per CPU of the topology; with that default a job is handed at most
    one helper fewer than the CPUs of its scope (the node, or the machine), so with its caller no
    more processes work at once than there are CPUs.  ``start_method`` defaults to forkserver with
    numpy preloaded (docs/design.md says why).  ``load_balance_factor`` is the kernel's 4 chunks per
    process; raise it to trade per-chunk overhead for balance.  Use it as a context manager, or call
    ``close()``.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        topology: Topology | None = None,
        start_method: str | None = None,
        load_balance_factor: int = LOAD_BALANCE_FACTOR,
    ):
        self.topology = topology or read_topology()
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if not isinstance(load_balance_factor, int) or load_balance_factor < 1:
            raise ValueError(f"load_balance_factor must be an int >= 1, got {load_balance_factor!r}")
        self.load_balance_factor = load_balance_factor
        self._cap_to_cpus = workers is None
        nworkers = self.topology.default_workers() if workers is None else workers
        method = start_method or "forkserver"
        if method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"start_method must be one of {multiprocessing.get_all_start_methods()}, got {method!r}"
            )
        self.start_method = method
        self._ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            self._ctx.set_forkserver_preload(["numpy", "padata_mp"])
            _start_forkserver()
        shm.sweep_dead_owners()
        self._lock = threading.Lock()
        self._closed = False
        self._rr_node = 0  # numa_aware round-robin position, kept across jobs as the kernel does
        self._cursors = [self._ctx.Value(_Cursor, lock=self._ctx.Lock()) for _ in range(nworkers)]
        # Chunk each process holds now, (start, end), end == start when none: workers then callers.
        self._held = self._ctx.RawArray(ctypes.c_int64, 2 * 2 * nworkers)
        self._free_slots = list(range(nworkers))
        self._workers: list[_Worker] = []
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
        return [(w.wid, w.proc.pid, w.node) for w in self._workers]

    def do_multithreaded(self, job: MtJob, node: int | None = None) -> JobReport:
        """Run ``job`` to completion; the calling thread works as the job's caller.

        ``node`` restricts helpers to that node's workers.  Raises JobFailedError if thread_fn
        raised or returned an error code, and WorkerDiedError if a helper died; either way the other
        processes stop claiming chunks, the error lists the ranges not done, and the engine stays
        usable.  A job with ``retry=True`` has the ranges a dead helper left re-run instead (up to
        MAX_RETRIES times); a job with an ``undo_fn`` has every completed range undone before the
        error is raised.
        """
        return self._do(job, node, caller_in_worker=False)

    def _do(self, job: MtJob, node: int | None, caller_in_worker: bool) -> JobReport:
        if not isinstance(job, MtJob):
            raise TypeError(f"job must be an MtJob, got {type(job).__name__}")
        if node is not None:
            self._check_node(node)
        payload = pickled_call(job)
        self._check_open()
        began = time.perf_counter()
        if job.size == 0:
            return JobReport(0, 0, [], 0.0)
        run = functools.partial(self._run_range, job, payload, node, caller_in_worker)
        report, failure = run(job.start, job.end, None, [])
        for _ in range(MAX_RETRIES if job.retry else 0):
            if not isinstance(failure, WorkerDiedError):
                break
            pending, failure = failure.not_done, None
            for i, (start, end) in enumerate(pending):
                part, failure = run(start, end, report.chunk_size, pending[i + 1 :])
                report.chunks += part.chunks
                for wid, busy in part.busy_s.items():
                    report.busy_s[wid] = report.busy_s.get(wid, 0.0) + busy
                report.retried.append((start, end))
                if failure:
                    break
        if isinstance(failure, (JobFailedError, WorkerDiedError)) and job.undo_fn is not None:
            self._undo(job, node, caller_in_worker, failure)
        report.elapsed_s = _since(began)
        if failure:
            raise failure
        return report

    def _undo(
        self, job: MtJob, node: int | None, caller_in_worker: bool, failure: JobFailedError | WorkerDiedError
    ) -> None:
        """The RFC's undo: undo_fn over every range that completed, as jobs cut like the original.
        Everything claimed and not in ``not_done`` completed: helpers that did not fail finish the
        chunk they hold before they stop."""
        done = subtract_ranges((job.start, job.end), failure.not_done)
        payload = pickled_call(undo_job(job, job.start, job.end))  # (undo_fn, fn_arg): one for all
        for start, end in done:
            undo = undo_job(job, start, end)
            _, undo_failure = self._run_range(undo, payload, node, caller_in_worker, start, end, None, [])
            if undo_failure:
                raise PadataError(
                    f"undo_fn failed on [{start}, {end}) while undoing after: {failure}"
                ) from undo_failure
        failure.undone = done

    def _run_range(
        self,
        job: MtJob,
        payload: bytes,
        node: int | None,
        caller_in_worker: bool,
        start: int,
        end: int,
        chunk: int | None,
        also_not_done: list[tuple[int, int]],
    ) -> tuple[JobReport, PadataError | None]:
        """Run [start, end) of ``job``: with helpers, chunk by chunk (``chunk`` None: the kernel's
        size for the processes got), else one call in the calling thread.  ``caller_in_worker``:
        a worker plays the caller, and the calling thread only waits.  Returns what was done and
        the failure, if any, whose ranges not done include ``also_not_done``."""
        wanted = kernel_nworks(job) - 1 + caller_in_worker
        helpers, slot = (
            self._take_helpers(wanted, node, job.numa_aware, caller_in_worker) if wanted else ([], -1)
        )
        if not helpers:
            # One call with the whole range, in the caller: no chunking, no locking.  (With no helper
            # free the kernel still chunks; one process gains nothing from it, so this does not.)
            try:
                busy = _call(job.thread_fn, start, end, job.fn_arg, also_not_done)
            except JobFailedError as failure:
                return JobReport(1, end - start, [], 0.0), failure
            return JobReport(1, end - start, [(start, end, CALLER)], 0.0, {CALLER: busy}), None
        nworks = len(helpers) + (not caller_in_worker)
        if chunk is None:
            chunk = plan(job, nworks, load_balance_factor=self.load_balance_factor).chunk_size
        # A lone worker as the caller makes one call with the whole range, like a caller: a chunk
        # size of ``end`` makes its one claim [start, end).
        claim_size = end if nworks == 1 else chunk
        try:
            results, unclaimed, first = self._share_chunks(
                job, payload, helpers, slot, start, end, claim_size, not caller_in_worker
            )
            # Before the release: a replacement takes a dead helper's id, and its held record.
            failure = self._failure(helpers, results, unclaimed, first, also_not_done)
        finally:
            self._release(helpers, slot)
        # Workers send chunk starts only; each end is job.next_chunk()'s, inlined (100,000 chunks).
        chunks = [
            (s, min((s // claim_size + 1) * claim_size, end), wid)
            for wid, r in results.items()
            if r is not None
            for s in r[0]
        ]
        busy = {wid: r[1] for wid, r in results.items() if r is not None}
        return JobReport(nworks, chunk, chunks, 0.0, busy), failure

    def submit(self, job: MtJob, node: int | None = None) -> Future:
        """Start ``job`` and return a Future of its JobReport, so several jobs, one per node as
        deferred init does, run at once.  The job's caller is one of its node's workers, as the
        kernel's pgdatinit is a thread bound to its node: jobs on different nodes then share no
        interpreter lock.  With no worker free, a thread of this process (bound to the node's CPUs)
        is the caller."""
        if node is not None:
            self._check_node(node)
        future: Future = Future()

        def run() -> None:
            if node is not None:
                pin_thread(self.topology.node(node).cpus)
            try:
                future.set_result(self._do(job, node, caller_in_worker=True))
            except BaseException as exc:
                future.set_exception(exc)

        future.set_running_or_notify_cancel()
        threading.Thread(target=run, name=f"padata-job-node{node}", daemon=True).start()
        return future

    def attach(self, *arrays: shm.SharedArray) -> dict[int, float]:
        """Map and pre-fault ``arrays`` in every idle worker now, so no job pays for it; returns
        each worker's seconds.  Busy workers, and replacements of dead ones, attach on first use."""
        handles = list(arrays)
        with self._lock:
            idle = [w for w in self._workers if w.slot is None and not w.dead]
            for w in idle:
                w.slot = -1
        try:
            for w in idle:
                with contextlib.suppress(OSError):  # dead: its replacement attaches on first use
                    w.conn.send(("attach", handles))
            seconds = {w.wid: _reply(w) for w in idle}
            return {wid: s for wid, s in seconds.items() if s is not None}
        finally:
            with self._lock:
                for w in idle:
                    w.slot = None

    def close(self, timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Stop every worker: each finishes its chunk first, or is killed after ``timeout`` seconds.
        Ctrl-C waits until this is done."""
        with shm.deferred_interrupts():
            self._close(timeout)

    def _close(self, timeout: float) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for cursor in self._cursors:
                cursor.get_obj().abort = 1
        if hasattr(self, "_remove_hook"):
            self._remove_hook()
        os.write(self._wake_w, b"x")
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.conn.send(("exit",))
        deadline = time.monotonic() + timeout
        for w in self._workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()
        if hasattr(self, "_watcher"):
            self._watcher.join()
        os.close(self._wake_r)
        os.close(self._wake_w)
        # The cursors' locks are named semaphores in /dev/shm until their last reference goes.
        self._workers, self._cursors = [], []

    def __enter__(self) -> Padata:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # Left by Ctrl-C (or SystemExit): the work is moot, so busy workers are killed at once.
        interrupted = exc_type is not None and not issubclass(exc_type, Exception)
        self.close(0.0 if interrupted else DRAIN_TIMEOUT_S)

    # -- running a job ----------------------------------------------------------------------

    def _share_chunks(
        self,
        job: MtJob,
        payload: bytes,
        helpers: list[_Worker],
        slot: int,
        start: int,
        end: int,
        chunk: int,
        caller_works: bool,
    ) -> tuple[dict[int, Any], tuple[int, int] | None, int | None]:
        """Helpers, and the calling thread if ``caller_works``, claim from the slot's cursor until
        it is empty or aborted.  Returns each one's ``(done, busy_s, failure)`` (None for a helper
        that died), after an abort the range nobody claimed, and the worker id whose chunk failed
        first (None if none did).  The cursor stays in this frame: errors are raised by callers, so
        no traceback keeps its lock (a named semaphore) alive after the engine closes."""
        cursor = self._cursors[slot]
        with cursor.get_lock():
            c = cursor.get_obj()
            c.start, c.size, c.chunk_size, c.abort, c.first_failed = start, end - start, chunk, 0, 0
        for w in helpers:
            w.conn.send(("job", slot, payload))
        mine = None
        try:
            if caller_works:
                mine = _claim_chunks(cursor, self._held, len(self._workers) + slot, job.thread_fn, job.fn_arg)
            replies = self._collect(helpers)
        except BaseException:
            # Ctrl-C while waiting: stop the helpers, give them a moment, then let it propagate.
            _abort(cursor)
            self._collect(helpers, timeout=DRAIN_TIMEOUT_S)
            raise
        if mine is not None and mine[2] is not None and not isinstance(mine[2][1], Exception):
            raise mine[2][1]  # Ctrl-C inside the caller's own thread_fn; the helpers have stopped
        results = {CALLER: mine, **replies} if caller_works else replies
        first = None if c.first_failed == 0 else c.first_failed - 1
        if first is not None and first >= len(self._workers):
            first = CALLER
        return results, ((c.start, c.start + c.size) if c.abort else None), first

    def _collect(self, helpers: list[_Worker], timeout: float | None = None) -> dict[int, Any]:
        """Each helper's reply ``(done, busy_s, failure)``, or None for a helper that died."""
        pending = {w.conn: w for w in helpers}
        replies: dict[int, Any] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            waits = list(pending) + [w.proc.sentinel for w in pending.values()]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = multiprocessing.connection.wait(waits, left)
            if not ready:  # a helper ignored the abort: kill it, the release replaces it
                for w in pending.values():
                    w.proc.kill()
                    w.proc.join()
                    replies[w.wid] = None
                break
            for w in list(pending.values()):
                if w.conn in ready or w.proc.sentinel in ready:
                    replies[w.wid] = _recv_or_none(w)
                    del pending[w.conn]
        return replies

    def _failure(
        self,
        helpers: list[_Worker],
        results: dict[int, Any],
        unclaimed: tuple[int, int] | None,
        first: int | None,
        also_not_done: list[tuple[int, int]],
    ) -> PadataError | None:
        """The job's error: the first death, else the first failed chunk (the worker id ``first``),
        else (ranges left undone with nobody failing) the engine's closing.  None if everything was
        done."""
        dead = [w for w in helpers if results.get(w.wid) is None]
        held = {w.wid: self._held_chunk(w.wid) for w in dead}
        failed = {wid: r[2] for wid, r in results.items() if r is not None and r[2] is not None}
        lost = [unclaimed] if unclaimed else []
        lost += [h for h in held.values() if h] + [f[0] for f in failed.values()]
        not_done = merge_ranges(lost + also_not_done)
        if dead:
            w = dead[0]
            code = w.proc.exitcode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            return WorkerDiedError(
                f"worker {w.wid} (pid {w.proc.pid}) died of {how} holding chunk {held[w.wid]}; "
                f"ranges not done: {not_done}",
                pid=w.proc.pid,
                exitcode=code,
                chunk=held[w.wid],
                not_done=not_done,
            )
        if failed:
            wid = first if first in failed else next(iter(failed))
            return _job_failed(wid, *failed[wid], not_done)
        if lost:  # stopped with nobody failing: the engine is closing
            return PadataError(
                f"the job was stopped before it finished (engine closed); ranges not done: {not_done}"
            )
        return None

    def _held_chunk(self, wid: int) -> tuple[int, int] | None:
        start, end = self._held[2 * wid], self._held[2 * wid + 1]
        return (start, end) if end > start else None

    # -- helpers and their lifetime ---------------------------------------------------------

    def _take_helpers(
        self, count: int, node: int | None, numa_aware: bool, caller_in_worker: bool
    ) -> tuple[list[_Worker], int]:
        with self._lock:
            self._check_open()
            if self._cap_to_cpus:  # with the caller, no more processes than CPUs
                cpus = len(self.topology.node(node).cpus) if node is not None else self.topology.cpu_limit
                count = min(count, cpus - (not caller_in_worker))
            idle = [w for w in self._workers if w.slot is None and (node is None or w.node == node)]
            idle = [w if _idle_alive(w) else self._replace(w) for w in idle]
            picked = self._round_robin(idle, count) if numa_aware and node is None else idle[:count]
            if not picked:
                return [], -1
            slot = self._free_slots.pop()
            for w in picked:
                w.slot = slot
                self._held[2 * w.wid + 1] = self._held[2 * w.wid]
            return picked, slot

    def _round_robin(self, idle: list[_Worker], count: int) -> list[_Worker]:
        """Helpers dealt over the nodes with CPUs in turn, the position kept across jobs."""
        nodes = [n.id for n in self.topology.nodes_with_cpus]
        by_node = {nid: [w for w in idle if w.node == nid] for nid in nodes}
        picked: list[_Worker] = []
        while len(picked) < count and any(by_node.values()):
            nid = nodes[self._rr_node % len(nodes)]
            self._rr_node += 1
            if by_node[nid]:
                picked.append(by_node[nid].pop(0))
        return picked

    def _release(self, helpers: list[_Worker], slot: int) -> None:
        with self._lock:
            for w in helpers:
                if not w.proc.is_alive():
                    w.slot = None  # so the watcher, seeing the death late, aborts no later job
                    if not self._closed:
                        self._replace(w)
                    continue
                _detach(w, w.pending_detach)
                w.pending_detach.clear()
                w.slot = None
            self._free_slots.append(slot)

    def _replace(self, dead: _Worker) -> _Worker:
        """Start a new worker in a dead one's place (same id and node).  Called with the lock held."""
        with contextlib.suppress(OSError):
            dead.conn.close()
        dead.proc.join(0)
        new = self._start_workers([dead.node], first_id=dead.wid)[0]
        self._workers[dead.wid] = new
        os.write(self._wake_w, b"x")  # the watcher must wait on the new sentinel
        return new

    def _start_workers(self, nodes: list[int], first_id: int = 0) -> list[_Worker]:
        started: list[_Worker] = []
        try:
            for wid, nid in enumerate(nodes, start=first_id):
                ours, theirs = self._ctx.Pipe()
                cpus = self.topology.node(nid).cpus
                args = (wid, cpus, theirs, self._cursors, self._held, os.getpid())
                proc = self._ctx.Process(target=_worker_main, args=args, name=f"padata-{wid}", daemon=True)
                proc.start()
                theirs.close()
                started.append(_Worker(wid, nid, proc, ours))
            for w in started:
                if not w.conn.poll(START_TIMEOUT_S):
                    raise PadataError(f"worker {w.wid} did not start within {START_TIMEOUT_S:.0f} s")
                if _recv_or_none(w) is None:
                    raise PadataError(f"worker {w.wid} died while starting (exit code {w.proc.exitcode})")
        except BaseException:
            for w in started:
                w.proc.kill()
                w.proc.join()
                w.conn.close()
            raise
        return started

    def _watch(self) -> None:
        """Stop a job's claims the moment one of its helpers dies."""
        while True:
            with self._lock:
                if self._closed:
                    return
                alive = {w.proc.sentinel: w for w in self._workers if not w.dead}
            ready = multiprocessing.connection.wait([self._wake_r, *alive])
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            with self._lock:
                for sentinel in ready:
                    w = alive.get(sentinel)
                    if w is not None:
                        w.dead = True
                        if w.slot is not None and w.slot >= 0:
                            _abort(self._cursors[w.slot])

    def _detach_everywhere(self, name: str) -> None:
        """A block was unlinked: idle workers unmap it now, busy ones when their job ends."""
        with self._lock:
            for w in self._workers:
                if w.slot is not None:
                    w.pending_detach.append(name)
                    continue
                _detach(w, [name])

    def _check_node(self, node: int) -> None:
        if not isinstance(node, int) or node not in {n.id for n in self.topology.nodes_with_cpus}:
            raise ValueError(
                f"node must be one of the nodes with CPUs {[n.id for n in self.topology.nodes_with_cpus]}, "
                f"got {node!r}"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise PadataError("this Padata engine is closed")


# -- what runs in every process that takes part ----------------------------------------------


def _claim_chunks(cursor: Any, held: Any, index: int, thread_fn: Any, arg: Any) -> tuple:
    """The kernel's padata_mt_helper(): claim the next chunk under the cursor's lock, run it, repeat.

    Returns ``(starts, busy_s, failure)``: the start of each chunk run (its end follows from the
    chunk size), the seconds spent in this loop, and None or ``(chunk, exception, traceback_text)``
    for the chunk whose call raised.
    """
    # The engine's hot path, tuned for jobs of tiny chunks: locals bound once, the lock's C methods
    # called directly (a ``with`` block costs five times as much), job.next_chunk() inlined.
    lock, c = cursor.get_lock(), cursor.get_obj()
    acquire, release, chunk_size = lock.acquire, lock.release, c.chunk_size
    starts, began = array("q"), time.perf_counter()
    slot_start, slot_end = 2 * index, 2 * index + 1
    start = end = 0
    try:
        while True:
            acquire()
            size = c.size
            if size == 0 or c.abort:
                release()
                return starts, time.perf_counter() - began, None
            start = c.start
            end = min((start // chunk_size + 1) * chunk_size, start + size)
            c.start, c.size = end, size - (end - start)
            # Recorded under the lock, so a helper never dies between claiming and holding.
            held[slot_start], held[slot_end] = start, end
            release()
            result = thread_fn(start, end, arg)
            if result is not None:
                _check_result(result)
            held[slot_end] = start
            starts.append(start)
    except BaseException as exc:
        _abort(cursor, index)
        text = traceback.format_exc()
        # Keep the text, not the frames: they reach back to this one, which holds the cursor, whose
        # lock (a named semaphore) must not outlive the engine.  Helpers' exceptions come back the
        # same way, pickled without frames.
        return starts, time.perf_counter() - began, ((start, end), exc.with_traceback(None), text)


def _worker_main(
    wid: int, cpus: tuple[int, ...], conn: Any, cursors: list, held: Any, coordinator: int
) -> None:
    # Pinned first, before numpy starts threads or shared memory is touched (first-touch placement).
    pin_process(cpus)
    # Ctrl-C reaches the whole process group: the coordinator alone handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            if not conn.poll(PARENT_CHECK_S):
                if not _alive(coordinator):
                    return
                continue
            message = conn.recv()
        except (EOFError, OSError):  # the coordinator is gone (a reset pipe, when it died mid-send)
            return
        kind = message[0]
        if kind == "exit":
            return
        if kind == "job":
            reply = _run_job(wid, cursors[message[1]], held, message[2])
        elif kind == "attach":
            began = time.perf_counter()
            for handle in message[1]:
                handle.array  # noqa: B018 - attaching and pre-faulting is the point
            reply = time.perf_counter() - began
        elif kind == "detach":
            reply = shm.detach(message[1])
        else:
            raise AssertionError(f"unknown message {kind!r}")
        try:
            conn.send(reply)
        except OSError:
            return


def _run_job(wid: int, cursor: Any, held: Any, payload: bytes) -> tuple:
    try:
        thread_fn, arg = pickle.loads(payload)
    except BaseException as exc:
        _abort(cursor, wid)
        return array("q"), 0.0, _portable(((0, 0), exc, traceback.format_exc()))
    done, busy, failure = _claim_chunks(cursor, held, wid, thread_fn, arg)
    return done, busy, _portable(failure) if failure else None


def _portable(failure: tuple) -> tuple:
    """A failure that pickles: the exception itself when it can travel, else a RuntimeError."""
    chunk, exc, tb = failure
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    return chunk, exc, tb


class _ErrorReturn(Exception):
    """thread_fn returned a non-zero error code: carried like an exception, reported as a code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _check_result(result: object) -> None:
    """What thread_fn returned, when not None: 0 is success, a non-zero int the RFC's error code,
    anything else a mistake (padata ignores results)."""
    if result != 0:
        if isinstance(result, int) and not isinstance(result, bool):
            raise _ErrorReturn(result)
        raise TypeError(
            "thread_fn must return None or an int error code (padata ignores results), got "
            f"{type(result).__name__}"
        )


def _job_failed(
    wid: int, chunk: tuple[int, int], exc: BaseException, tb: str, not_done: list[tuple[int, int]]
) -> JobFailedError:
    who = "the caller" if wid == CALLER else f"worker {wid}"
    if isinstance(exc, _ErrorReturn):
        return JobFailedError(
            f"thread_fn returned error {exc.code} in {who} on chunk {chunk}; ranges not done: {not_done}",
            chunk=chunk,
            worker=wid,
            not_done=not_done,
            error=exc.code,
        )
    error = JobFailedError(
        f"thread_fn raised in {who} on chunk {chunk}; ranges not done: {not_done}\n{tb}",
        chunk=chunk,
        worker=wid,
        not_done=not_done,
    )
    error.__cause__ = exc
    return error


def _call(thread_fn: Any, start: int, end: int, arg: Any, also_not_done: list[tuple[int, int]]) -> float:
    """One call in the caller, with nothing shared; a failure becomes JobFailedError."""
    began = time.perf_counter()
    try:
        result = thread_fn(start, end, arg)
        if result is not None:
            _check_result(result)
    except Exception as exc:
        not_done = merge_ranges([(start, end), *also_not_done])
        text = traceback.format_exc()
        failure = _job_failed(CALLER, (start, end), exc.with_traceback(None), text, not_done)
        raise failure from failure.__cause__
    return time.perf_counter() - began


def _idle_alive(w: _Worker) -> bool:
    """An idle worker sends nothing: a readable pipe means it died (its end closed at exit), even
    before its exit status reaches us."""
    return w.proc.is_alive() and not w.conn.poll()


def _detach(w: _Worker, names: list[str]) -> None:
    """Have an idle worker unmap blocks; a dead worker holds nothing."""
    with contextlib.suppress(OSError, EOFError):
        for name in names:
            w.conn.send(("detach", name))
            w.conn.recv()


def _reply(w: _Worker) -> Any:
    """Wait for the worker's reply; None if it dies first."""
    multiprocessing.connection.wait([w.conn, w.proc.sentinel])
    return _recv_or_none(w)


def _recv_or_none(w: _Worker) -> Any:
    """The worker's reply, or None if it died without one (then reaped, so its exit code is known)."""
    try:
        if w.conn.poll():
            return w.conn.recv()
    except (EOFError, OSError):
        pass
    w.proc.join(1.0)  # its pipe closes a moment before its exit status arrives
    return None


def _abort(cursor: Any, index: int | None = None) -> None:
    """Stop the job's claims; ``index``: the claimant whose chunk failed, kept if it is the first."""
    with cursor.get_lock():
        c = cursor.get_obj()
        c.abort = 1
        if index is not None and c.first_failed == 0:
            c.first_failed = index + 1


def _since(began: float) -> float:
    return time.perf_counter() - began


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_forkserver() -> None:
    """Start the forkserver (once per interpreter) with SIGINT ignored: a Ctrl-C during its first
    second, while it imports numpy, would otherwise print its traceback beside ours.  Workers ignore
    SIGINT anyway.  Only the main thread may change signal handlers; elsewhere it starts as is."""
    if threading.current_thread() is not threading.main_thread():
        multiprocessing.forkserver.ensure_running()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
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
