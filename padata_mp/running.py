"""A running job: one object owns all a job is while it runs, as the kernel's padata_mt_job_state.

The coordinator's side of one job, from the moment its helpers are taken until each of them has
either replied or is known dead and reaped::

    caller ──► RunningJob ──► cursor[slot] = (start, size, chunk_size, generation)
                  │                 ▲  (one lock; a claimant records its chunk in held[] before
                  │                 │   the cursor moves)
                  ├─ RunJob ──► helper ── claim_chunks ──┤
                  ├─ the caller works too: claim_chunks ─┘
                  ◄── JobDone(generation, starts, busy_s, failure) from each helper, or its death
                  └──► JobReport, or the PadataError that names the ranges not done

A job is over only when every helper it was given is accounted for, so no helper of it can touch
memory after the call returns, and a slot is reused only then.  Only the generation written in
the cursor may claim from it: stopping a job is writing STOPPED there.  Retry and undo, which run
more ranges of a job after a failure, are here too, on top of a ``run_range`` the pool provides.
"""

from __future__ import annotations

import multiprocessing.connection
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .errors import EngineClosedError, JobFailedError, PadataError, WorkerDiedError
from .job import MtJob, pickled_call, undo_job
from .ranges import Ranges, merge_ranges, subtract_ranges
from .worker import STOPPED, ChunkFailure, ErrorReturn, JobDone, RunJob, check_result, claim_chunks

CALLER = -1  # worker id of the job's caller in reports
DRAIN_TIMEOUT_S = 1.0  # how long helpers get to finish their chunk after Ctrl-C
MAX_RETRIES = 3  # rounds of re-running what dead helpers left, for jobs with retry=True
# A claimant holds the cursor's lock for a few stores; one not free for this long is held by a
# claimant that died inside them, and is released on its behalf.
LOCK_STUCK_S = 1.0
CHECK_S = 0.5  # how often a waiting job looks for helpers that hold nothing and do not answer

_repairing = threading.Lock()  # one repair of a dead claimant's lock at a time in this process


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


@dataclass(frozen=True)
class Progress:
    """How far a job has got: of its ``size`` indices, ``claimed`` were handed out and ``done``
    finished.  Both only rise, to ``size`` when the job succeeds."""

    size: int
    claimed: int
    done: int

    @property
    def fraction(self) -> float:
        return self.done / self.size if self.size else 1.0


class JobFuture(Future):
    """The Future of a submitted job's JobReport that can also say how far the job has got."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self._lock = threading.Lock()
        self._finished = 0  # indices of ranges already run
        self._running: RunningJob | None = None

    def progress(self) -> Progress:
        """Claimed and done so far (re-runs after a helper died count again, capped at size)."""
        with self._lock:
            finished, running = self._finished, self._running
        if self.done() and self.exception() is None:
            return Progress(self.size, self.size, self.size)
        claimed, done = running.progress() if running else (0, 0)
        return Progress(self.size, min(self.size, finished + claimed), min(self.size, finished + done))

    def track(self, running: RunningJob | None, finished: int = 0) -> None:
        """The range now running (None: none), and ``finished`` more indices run."""
        with self._lock:
            self._running = running
            self._finished += finished


@dataclass(eq=False)
class Helper:
    """A worker process as the coordinator sees it.  ``owner`` is what holds it now: the
    RunningJob it serves, another exchange in progress, or None when idle."""

    wid: int
    node: int
    process: Any
    conn: Any
    owner: object | None = None
    dead: bool = False  # seen dead by the watcher
    pending_detach: list[str] = field(default_factory=list)

    def send(self, message: object) -> bool:
        """False if the worker is gone (its pipe is broken or already closed)."""
        try:
            self.conn.send(message)
        except (OSError, ValueError):
            return False
        return True

    def receive(self, readable: bool = False) -> Any:
        """The message waiting from the worker (``readable``: its pipe is known to be), or None if
        it died without one (then reaped)."""
        try:
            if readable or self.conn.poll():
                return self.conn.recv()
        except (EOFError, OSError):
            pass
        self.process.join(1.0)  # its pipe closes a moment before its exit status arrives
        return None

    def kill(self) -> None:
        self.process.kill()
        self.process.join()

    def kill_unresponsive(self, waited: float) -> None:
        warnings.warn(
            f"padata_mp: worker {self.wid} (pid {self.process.pid}) did not answer within {waited:g} s "
            "(stopped, or stuck); killed, and replaced",
            RuntimeWarning,
            stacklevel=2,
        )
        self.kill()

    def how_it_died(self) -> str:
        code = self.process.exitcode
        return f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"


class RunningJob:
    """[start, end) of ``job`` on ``helpers`` and the cursor of their slot, cut in chunks of
    ``chunk_size`` (claimed in ``claim_size``: the whole range for a lone worker as the caller); the
    calling thread works too when ``caller_works``.  ``held`` is the shared record of what each
    claimant holds; the caller's index in it is ``caller_index``."""

    def __init__(
        self,
        job: MtJob,
        payload: bytes,
        helpers: list[Helper],
        cursor: Any,
        slot: int,
        generation: int,
        held: Any,
        caller_index: int,
        span: tuple[int, int],
        chunk_size: int,
        claim_size: int,
        caller_works: bool,
        reply_timeout: float,
    ):
        self.job, self.payload, self.helpers = job, payload, helpers
        self.cursor, self.slot, self.generation = cursor, slot, generation
        self.held, self.caller_index = held, caller_index
        self.start, self.end = span
        self.chunk_size, self.claim_size = chunk_size, claim_size
        self.caller_works, self.reply_timeout = caller_works, reply_timeout
        self.replies: dict[int, JobDone] = {}  # by worker id; CALLER for the caller's own claims
        self.lost: list[Helper] = []  # died (or were killed) before they replied, or caused a stop
        self.unresponsive: list[Helper] = []  # held nothing with nothing left to claim: killed
        self.closed = False  # the engine closed under it

    # -- the caller's part --------------------------------------------------------------------

    def run(self) -> None:
        """Share, work, collect.  Returns once every helper is accounted for; on Ctrl-C the helpers
        get DRAIN_TIMEOUT_S to finish their chunk, the rest are killed, and it propagates."""
        with self.cursor.get_lock():
            c = self.cursor.get_obj()
            c.start, c.size, c.chunk_size = self.start, self.end - self.start, self.claim_size
            c.generation, c.first_failed = self.generation, 0
        message = RunJob(self.slot, self.generation, self.payload)
        pending = []
        for h in self.helpers:
            if h.send(message):
                pending.append(h)
            else:  # died after it was picked: it held nothing, and the others go on
                h.kill()
                self._lose(h)
        try:
            if self.caller_works:
                job = self.job
                mine = claim_chunks(
                    self.cursor, self.generation, self.held, self.caller_index, job.thread_fn, job.fn_arg
                )
                self.replies[CALLER] = mine
            self._collect(pending)
        except BaseException:
            self.stop()
            self._collect(pending, drain=DRAIN_TIMEOUT_S)
            raise
        finally:
            if self.lost or self.unresponsive:
                repair_lock(self.cursor)
        mine_failed = self.replies.get(CALLER)
        if mine_failed and mine_failed.failure and not isinstance(mine_failed.failure.error, Exception):
            raise mine_failed.failure.error  # Ctrl-C inside the caller's own thread_fn

    def stop(self) -> None:
        """No more claims for this job (a helper died, Ctrl-C, the engine closing)."""
        stop_claims(self.cursor, self.generation)

    def stop_for_death(self, helper: Helper) -> None:
        """The watcher saw ``helper`` die: if it had not replied, it is lost and the job stops."""
        if helper.wid not in self.replies and helper not in self.unresponsive:
            self._lose(helper)
            self.stop()

    def _lose(self, helper: Helper) -> None:
        if helper not in self.lost:
            self.lost.append(helper)

    def _collect(self, pending: list[Helper], drain: float | None = None) -> None:
        """Wait until each of ``pending`` has replied or died.  Unbounded while helpers work (a
        chunk takes as long as it takes), except that a helper holding nothing of a job with nothing
        left to claim gets ``reply_timeout`` s to answer; with ``drain``, everyone gets that long."""
        waiting = {h.conn: h for h in pending}
        deadline = None if drain is None else time.monotonic() + drain
        quiet_since: dict[int, float] = {}
        while waiting:
            left = CHECK_S if deadline is None else max(0.0, deadline - time.monotonic())
            ready = ready_among(list(waiting.values()), left)
            for h, readable in ready.items():
                reply = h.receive(readable)
                if reply is None:
                    self._lose(h)
                elif isinstance(reply, JobDone) and reply.generation == self.generation:
                    self.replies[h.wid] = reply
                else:  # a late answer to an exchange that Ctrl-C cut short: the reply comes next
                    continue
                del waiting[h.conn]
            if deadline is not None and time.monotonic() >= deadline:
                for h in waiting.values():  # ignored the stop: killed, so nothing runs on
                    h.kill()
                    self._lose(h)
                return
            if not ready:
                self._kill_the_unresponsive(waiting, quiet_since)

    def _kill_the_unresponsive(self, waiting: dict[Any, Helper], quiet_since: dict[int, float]) -> None:
        lock = self.cursor.get_lock()
        if not lock.acquire(timeout=CHECK_S):
            return
        try:
            c = self.cursor.get_obj()
            drained = c.size == 0 or c.generation != self.generation
            idle = [h for h in waiting.values() if drained and self._held(h.wid) is None]
        finally:
            lock.release()
        now = time.monotonic()
        for h in waiting.values():
            if h not in idle:
                quiet_since.pop(h.wid, None)
        for h in idle:
            if now - quiet_since.setdefault(h.wid, now) >= self.reply_timeout:
                # Nothing left to claim and nothing held: killing it loses no work.
                h.kill_unresponsive(self.reply_timeout)
                self.unresponsive.append(h)
                del waiting[h.conn]

    def progress(self) -> tuple[int, int]:
        """(claimed, done) of this range now, read without the cursor's lock: the claim loop pays
        nothing for it, and a claim in flight may be seen a moment late."""
        claimed = (self.end - self.start) - self.cursor.get_obj().size
        claimants = [h.wid for h in self.helpers] + ([self.caller_index] if self.caller_works else [])
        running = sum(max(0, self.held[2 * i + 1] - self.held[2 * i]) for i in claimants)
        return claimed, max(0, claimed - running)

    # -- the verdict ----------------------------------------------------------------------------

    def report(self) -> JobReport:
        """What was done: chunks and busy time of every claimant that replied."""
        nworks = len(self.helpers) + self.caller_works
        end, size = self.end, self.claim_size
        # Workers send chunk starts only; each end is job.next_chunk()'s, inlined (100,000 chunks).
        chunks = [
            (s, min((s // size + 1) * size, end), wid) for wid, r in self.replies.items() for s in r.starts
        ]
        busy = {wid: r.busy_s for wid, r in self.replies.items()}
        return JobReport(nworks, self.chunk_size, chunks, 0.0, busy)

    def failure(self, also_not_done: Ranges) -> PadataError | None:
        """The job's error, or None if every index was done.  Its ranges not done: the cursor's
        rest, the chunks lost helpers held, the failed chunks, and ``also_not_done``."""
        held = {h.wid: self._held(h.wid) for h in self.lost}
        failed = {wid: r.failure for wid, r in self.replies.items() if r.failure is not None}
        own = merge_ranges(
            [r for r in [self._unclaimed(), *held.values(), *(f.chunk for f in failed.values())] if r]
        )
        if not own and not failed:
            return None  # a helper lost while holding nothing costs the job nothing
        not_done = merge_ranges(own + also_not_done)
        if self.closed:
            return EngineClosedError(
                f"the engine was closed while the job ran; ranges not done: {not_done}", not_done=not_done
            )
        if self.lost:
            h = next((h for h in self.lost if held[h.wid]), self.lost[0])
            return WorkerDiedError(
                f"worker {h.wid} (pid {h.process.pid}) died of {h.how_it_died()} holding chunk "
                f"{held[h.wid]}; ranges not done: {not_done}",
                pid=h.process.pid,
                exitcode=h.process.exitcode,
                chunk=held[h.wid],
                not_done=not_done,
            )
        # Only a death, a failure or the engine's closing stop a job whose caller returned.
        assert failed, f"job stopped with no cause; ranges not done: {not_done}"
        first = self._first_failed()
        return job_failed(first if first in failed else next(iter(failed)), failed, not_done)

    def _unclaimed(self) -> tuple[int, int] | None:
        """What nobody claimed, once the job stopped early (clipped: a claimant killed between its
        two stores leaves the cursor's start moved and its size not)."""
        c = self.cursor.get_obj()
        if c.generation == self.generation:
            return None
        return (max(c.start, self.start), min(c.start + c.size, self.end))

    def _first_failed(self) -> int | None:
        first = self.cursor.get_obj().first_failed - 1
        if first < 0:
            return None
        return CALLER if first == self.caller_index else first

    def _held(self, wid: int) -> tuple[int, int] | None:
        start, end = self.held[2 * wid], self.held[2 * wid + 1]
        return (start, end) if end > start else None


def ready_among(helpers: list[Helper], timeout: float | None) -> dict[Helper, bool]:
    """The helpers with something to read, waiting up to ``timeout`` s for one: each with True when
    its pipe is readable (a message, or its end closed), False when only its exit is known."""
    if not helpers:
        return {}
    ready = set(
        multiprocessing.connection.wait(
            [*(h.conn for h in helpers), *(h.process.sentinel for h in helpers)], timeout
        )
    )
    return {h: h.conn in ready for h in helpers if h.conn in ready or h.process.sentinel in ready}


def dead_among(idle: list[Helper]) -> set[Helper]:
    """Which of the ``idle`` workers have died, in one look at all their pipes and sentinels: an
    idle worker sends nothing, so a readable pipe means its end closed at exit, even before its
    exit status reaches us."""
    return set(ready_among(idle, 0))


def exchange(helpers: list[Helper], message: object, timeout: float) -> dict[int, Any]:
    """Send ``message`` to each of ``helpers`` and gather their answers, waiting ``timeout`` s at
    most in all.  A helper that died answers None; one that did not answer in time is killed (a
    warning says so) and answers None too."""
    answers: dict[int, Any] = {h.wid: None for h in helpers}
    waiting = {}
    for h in helpers:
        if h.send(message):
            waiting[h.conn] = h
        else:
            h.kill()
    deadline = time.monotonic() + timeout
    while waiting:
        ready = ready_among(list(waiting.values()), max(0.0, deadline - time.monotonic()))
        if not ready:
            for h in waiting.values():
                h.kill_unresponsive(timeout)
            break
        for h, readable in ready.items():
            answers[h.wid] = h.receive(readable)
            del waiting[h.conn]
    return answers


def stop_claims(cursor: Any, generation: int) -> None:
    """Stop ``generation``'s claims from ``cursor``, if it is still its, even where a claimant died
    holding the cursor's lock."""
    lock = cursor.get_lock()
    _take(lock)
    try:
        c = cursor.get_obj()
        if c.generation == generation:
            c.generation = STOPPED
    finally:
        lock.release()


def repair_lock(cursor: Any) -> None:
    """After a job lost or killed a helper, once nobody alive claims from its cursor: free the
    lock if a dead claimant still holds it, so the slot's next job can take it."""
    lock = cursor.get_lock()
    _take(lock)
    lock.release()


def _take(lock: Any) -> None:
    """Acquire a cursor's lock; one not free within LOCK_STUCK_S is a dead claimant's, released on
    its behalf first (one repair at a time in this process)."""
    with _repairing:
        if not lock.acquire(timeout=LOCK_STUCK_S):
            lock.release()
            lock.acquire()


def job_failed(wid: int, failed: dict[int, ChunkFailure], not_done: Ranges) -> JobFailedError:
    """The JobFailedError for worker ``wid``'s failure (CALLER: the caller's)."""
    chunk, exc, tb = failed[wid]
    who = "the caller" if wid == CALLER else f"worker {wid}"
    if chunk is None:
        error = JobFailedError(
            f"thread_fn or fn_arg could not be loaded in {who}, so it ran nothing there: "
            f"{type(exc).__name__}: {exc} (a module the worker cannot import, or an object whose "
            f"unpickling fails there); ranges not done: {not_done}",
            chunk=None,
            worker=wid,
            not_done=not_done,
        )
    elif isinstance(exc, ErrorReturn):
        return JobFailedError(
            f"thread_fn returned error {exc.code} in {who} on chunk {chunk}; ranges not done: {not_done}",
            chunk=chunk,
            worker=wid,
            not_done=not_done,
            error=exc.code,
        )
    else:
        error = JobFailedError(
            f"thread_fn raised in {who} on chunk {chunk}; ranges not done: {not_done}\n{tb}",
            chunk=chunk,
            worker=wid,
            not_done=not_done,
        )
    error.__cause__ = exc
    return error


def call_in_caller(
    job: MtJob, start: int, end: int, also_not_done: Ranges
) -> tuple[JobReport, PadataError | None]:
    """One call with the whole range in the calling thread: no chunking, no locking."""
    began = time.perf_counter()
    try:
        result = job.thread_fn(start, end, job.fn_arg)
        if result is not None:
            check_result(result)
    except Exception as exc:
        failure = ChunkFailure.caught((start, end), exc)
        not_done = merge_ranges([(start, end), *also_not_done])
        return JobReport(1, end - start, [], 0.0), job_failed(CALLER, {CALLER: failure}, not_done)
    busy = time.perf_counter() - began
    return JobReport(1, end - start, [(start, end, CALLER)], 0.0, {CALLER: busy}), None


# -- more ranges of a job after a failure -----------------------------------------------------

RunRange = Callable[[MtJob, bytes, int, int, "int | None", Ranges], "tuple[JobReport, PadataError | None]"]


def run_with_retry(job: MtJob, payload: bytes, run_range: RunRange) -> tuple[JobReport, PadataError | None]:
    """Run the whole job; with ``retry=True``, re-run what dead helpers left, up to MAX_RETRIES
    rounds, with the first round's chunk size."""
    report, failure = run_range(job, payload, job.start, job.end, None, [])
    for _ in range(MAX_RETRIES if job.retry else 0):
        if not isinstance(failure, WorkerDiedError):
            break
        pending, failure = failure.not_done, None
        for i, (start, end) in enumerate(pending):
            part, failure = run_range(job, payload, start, end, report.chunk_size, pending[i + 1 :])
            report.chunks += part.chunks
            for wid, busy in part.busy_s.items():
                report.busy_s[wid] = report.busy_s.get(wid, 0.0) + busy
            report.retried.append((start, end))
            if failure:
                break
    return report, failure


def undo(job: MtJob, failure: JobFailedError | WorkerDiedError, run_range: RunRange) -> None:
    """The RFC's undo: undo_fn over every range that completed, as jobs cut like the original.
    Everything claimed and not in ``not_done`` completed: helpers that did not fail finish the
    chunk they hold before they stop."""
    done = subtract_ranges((job.start, job.end), failure.not_done)
    payload = pickled_call(undo_job(job, job.start, job.end))  # (undo_fn, fn_arg): one for all
    for start, end in done:
        _, undo_failure = run_range(undo_job(job, start, end), payload, start, end, None, [])
        if undo_failure:
            raise PadataError(
                f"undo_fn failed on [{start}, {end}) while undoing after: {failure}"
            ) from undo_failure
    failure.undone = done
