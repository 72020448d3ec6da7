"""A running job: one object owns all a job is while it runs, as the kernel's padata_mt_job_state
(the data flow is pool.py's diagram).

It arms the slot's cursor, sends each helper the job, claims with them, and records each
helper's reply (read from its pipe by the caller itself while it waits) or death (delivered by
the manager thread; a death while holding a chunk stops the job at once).  A job is over only
when every helper it was given has replied or is dead (or killed: from then on it runs nothing),
so no helper of it can touch memory after the call returns, and a slot is reused only then.  The
verdict is computed once, from the replies, the deaths, the claims and the cursor, and is the
same for every order in which they came.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pickle
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, FINISHED
from dataclasses import dataclass, field
from typing import Any

from .checks import seconds
from .errors import EngineClosedError, JobFailedError, PadataError, WorkerDiedError
from .interrupts import Gate, gate
from .job import MtJob
from .manager import Helper
from .ranges import Ranges, merge_ranges
from .worker import ChunkFailure, ErrorReturn, JobDone, RunJob, Slot, check_result, claim_chunks, stop

LOGGER = logging.getLogger(__name__)
CALLER = -1  # worker id of the job's caller in reports
DRAIN_TIMEOUT_S = 1.0  # how long helpers get to finish their chunk after Ctrl-C
CHECK_S = 0.5  # how often a waiting job looks for helpers that hold nothing and do not answer
STOP_TIMEOUT_S = DRAIN_TIMEOUT_S + 10.0  # a stopped job's helpers drain, then are killed and reaped


class JobCancelledError(PadataError, CancelledError):
    """The job's future was cancelled: its helpers stopped claiming and finished the chunk they
    held.  ``not_done`` lists the ranges left undone; the rest was done."""

    def __init__(self, message: str, *, not_done: Ranges):
        super().__init__(message)
        self.not_done = not_done


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
    """The Future of a submitted job's JobReport, which can also say how far the job has got and
    stop it.  It keeps concurrent.futures' contract: ``cancel()`` returns True exactly when the
    future ends cancelled (``cancelled()`` True, ``result()`` and ``exception()`` raising
    CancelledError - here a JobCancelledError naming the ranges not done), and False when the job
    ended anyway (it finished, or failed, before the stop took).  Waits here never take a lock that
    a Ctrl-C could leave held: they poll a descriptor that the job's end makes readable."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self._lock = threading.RLock()  # re-entered by a Ctrl-C handler that stops the job
        self._finished = 0  # indices of ranges already run
        self._running: RunningJob | None = None
        self._stopping = False
        self._reporters: list[threading.Thread] = []
        self._ended = os.eventfd(0, os.EFD_CLOEXEC)  # readable once the job has ended
        weakref.finalize(self, os.close, self._ended)

    def watch(self, interval: float = 0.1) -> Iterator[Progress]:
        """``progress()`` every ``interval`` seconds until the job ends, then once more (the last
        is final: ``done`` is ``size`` if the job succeeded).  No busy loop: it sleeps between.
        Ctrl-C while it waits or reads the progress stops the job, as in ``result()``; one in the
        loop's own body is the loop's, and leaving the loop does not stop the job."""
        interval = seconds("interval", interval)
        while True:
            with self._stopped_by_ctrl_c():
                self._wait(interval)
                finished = self._ended_now()
                progress = self.progress()
            yield progress
            if finished:
                return

    def on_progress(self, fn: Callable[[Progress], object], interval: float = 0.1) -> None:
        """Call ``fn(progress)`` from a thread of this process every ``interval`` seconds while the
        job runs, and once when it has ended, before ``result()`` returns.  An exception in ``fn``
        is logged and ends its calls, as concurrent.futures does with done callbacks.  The grain
        is the job's chunks (``JobReport.chunk_size``): progress counts chunks done."""
        self._report(fn, seconds("interval", interval), lambda: None)

    def progress_bar(self, interval: float = 0.1, **tqdm_options: Any) -> Any:
        """Show the job's progress as a tqdm bar counting indices done, and return it: a context
        manager, closed when the job ends, before ``result()`` returns, so what follows prints
        after it.  A notebook widget where ipywidgets is there to draw it, else text;
        ``tqdm_options`` go to tqdm.  Needs tqdm (``pip install tqdm``, or the ``progress``
        extra); without it ImportError says so."""
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError(
                "progress_bar needs tqdm: pip install tqdm (or 'padata_mp[progress]')"
            ) from None
        if importlib.util.find_spec("ipywidgets") is None:  # tqdm.auto would warn and draw text
            from tqdm.std import tqdm
        bar = tqdm(**{"total": self.size, "unit": "index", "unit_scale": True, **tqdm_options})
        self._report(lambda progress: bar.update(progress.done - bar.n), interval, bar.close)
        return bar

    def _report(self, fn: Callable[[Progress], object], interval: float, end: Callable[[], object]) -> None:
        def report() -> None:
            try:
                for progress in self.watch(interval):
                    fn(progress)
            except Exception:
                LOGGER.exception("progress callback %r raised; it is not called again", fn)
            finally:
                end()

        thread = threading.Thread(target=report, name="padata-progress", daemon=True)
        with self._lock:
            self._reporters.append(thread)
        thread.start()

    def progress(self) -> Progress:
        """Claimed and done so far (re-runs after a helper died count again, capped at size)."""
        with self._lock:
            finished, running = self._finished, self._running
        # The job's outcome read without the Future's condition: a Ctrl-C handler that stops the
        # job may run here, and must not find that lock held while it waits for the job's end.
        if self._ended_now() and self._state == FINISHED and self._exception is None:
            return Progress(self.size, self.size, self.size)
        claimed, done = running.progress() if running else (0, 0)
        return Progress(self.size, min(self.size, finished + claimed), min(self.size, finished + done))

    def cancel(self) -> bool:
        """Stop the job wherever it is, queued or running, and wait until it has stopped (its
        helpers finish the chunk they hold, DRAIN_TIMEOUT_S at most, or are killed).  True if it
        ended cancelled; False if it had ended already, or ended anyway."""
        self._stop()
        self._wait(STOP_TIMEOUT_S)
        return self.cancelled()

    def result(self, timeout: float | None = None) -> JobReport:
        """The JobReport, once the job is done (``timeout``: as concurrent.futures'), or its error.
        Ctrl-C while waiting here stops the job, as do_multithreaded would, before it propagates."""
        self._settled(timeout)
        return super().result(0)  # TimeoutError if it is not done yet

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The job's error, None if it succeeded; as ``result()`` waits.  A cancelled job raises
        its JobCancelledError here, as concurrent.futures raises CancelledError."""
        self._settled(timeout)
        return super().exception(0)

    def _settled(self, timeout: float | None) -> None:
        """Wait for the end (as result() does) and for the progress reporters' last word; raise
        the JobCancelledError of a cancelled job."""
        if not self._ended_now():
            with self._stopped_by_ctrl_c():
                self._wait(timeout)
        if self._ended_now():
            with self._lock:
                reporters = [t for t in self._reporters if t is not threading.current_thread()]
            for thread in reporters:
                thread.join(STOP_TIMEOUT_S)
        if self.cancelled():
            raise self._exception  # type: ignore[misc]  # the JobCancelledError the job ended with

    def _ended_within(self, seconds: float) -> bool:
        """The job has ended (its outcome is set), or does within ``seconds``: a poll of the
        descriptor, no lock taken (a poll object per call: one may not be polled by two threads)."""
        poller = select.poll()
        poller.register(self._ended, select.POLLIN)
        return bool(poller.poll(seconds * 1000))

    def _ended_now(self) -> bool:
        return self._ended_within(0)

    def _wait(self, timeout: float | None) -> None:
        """Until the job has ended or ``timeout`` s passed; in ticks, so that a Ctrl-C the kernel
        hands to another thread still has its handler run here soon."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = CHECK_S if deadline is None else deadline - time.monotonic()
            if self._ended_within(max(0.0, min(CHECK_S, left))) or left <= 0:
                return

    def _stopped_by_ctrl_c(self) -> contextlib.AbstractContextManager[Gate]:
        """A wait for this job: a Ctrl-C in it stops the job (bounded) before it propagates.  The
        stop is the SIGINT handler's own first act, so no moment of the block lets one through
        with the job still running."""
        return gate(on_interrupt=lambda: stop_all([self]))

    @property
    def stopping(self) -> bool:
        """cancel() was called."""
        return self._stopping

    def track(self, running: RunningJob | None, finished: int = 0) -> None:
        """The range now running (None: none), and ``finished`` more indices run."""
        with self._lock:
            self._running = running
            self._finished += finished
            stopping = self._stopping
        if running is not None and stopping:
            running.cancel()

    def end(self, report: JobReport | None, error: BaseException | None) -> None:
        """The job has ended, with ``report`` or ``error``: cancelled, if it stopped because
        ``cancel()`` asked it to; then every wait for it ends."""
        if isinstance(error, JobCancelledError) and self._stopping:
            with self._condition:  # as Future.cancel() and set_running_or_notify_cancel() would
                self._state, self._exception = CANCELLED_AND_NOTIFIED, error
                for waiter in self._waiters:
                    waiter.add_cancelled(self)
                self._condition.notify_all()
            self._invoke_callbacks()  # type: ignore[attr-defined]
        elif error is not None:
            self.set_exception(error)
        else:
            self.set_result(report)
        os.eventfd_write(self._ended, 1)

    def _stop(self) -> None:
        with self._lock:
            if self._ended_now():
                return
            self._stopping = True
            running = self._running
        if running is not None:
            running.cancel()


def stop_all(futures: Iterable[JobFuture]) -> None:
    """Stop each job and wait until each has stopped (its helpers finish their chunk in
    DRAIN_TIMEOUT_S, or are killed), STOP_TIMEOUT_S at most, so nothing of them runs on."""
    futures = list(futures)
    for future in futures:
        future._stop()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for future in futures:
        future._wait(max(0.0, deadline - time.monotonic()))


class RunningJob:
    """``span`` of ``job`` on ``helpers`` and ``slot``, cut in chunks of ``chunk_size``; the calling
    thread works too when ``caller_works``.  A lone worker as the caller claims the whole span in
    one call.  ``reply_timeout``: how long a helper holding nothing of a job with nothing left to
    claim may take to reply before it is killed."""

    def __init__(
        self,
        job: MtJob,
        payload: bytes,
        helpers: list[Helper],
        slot: Slot,
        generation: int,
        span: tuple[int, int],
        chunk_size: int,
        caller_works: bool,
        reply_timeout: float,
    ):
        self.job, self.payload, self.helpers = job, payload, helpers
        self.slot, self.generation = slot, generation
        self.start, self.end = span
        self.chunk_size, self.caller_works, self.reply_timeout = chunk_size, caller_works, reply_timeout
        self.claim_size = self.end if len(helpers) + caller_works == 1 else chunk_size
        self.replies: dict[int, JobDone] = {}  # by worker id; CALLER for the caller's side
        self.dead: dict[int, Helper] = {}  # died, or were killed, before they replied
        self.closed = False  # the engine closed under it
        self.cancelled = False  # its future's cancel()
        # Wakes the caller in _collect when the manager delivers; open only while run() runs.
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = -1, -1

    # -- the manager thread's part --------------------------------------------------------------

    def deliver(self, helper: Helper, message: object | None) -> None:
        """A helper's reply, or (None) its death; a death while holding a chunk stops the job."""
        self._record(helper, message)
        with self._wake_lock:
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    def _record(self, helper: Helper, message: object | None) -> None:
        if message is None:
            if helper.wid not in self.replies:
                self.dead[helper.wid] = helper
                if self.slot.claims.chunk(helper.wid) is not None:
                    stop(self.slot.cursor, self.generation)
        elif isinstance(message, JobDone) and message.generation == self.generation:
            self.replies[helper.wid] = message
        else:  # not this job's: a worker that speaks out of turn is not to be trusted
            helper.kill()

    # -- the caller's part --------------------------------------------------------------------

    def run(self, gate: Gate) -> None:
        """Share, work, collect; then what helpers that vanished left unclaimed.  Returns once every
        helper is accounted for.  On Ctrl-C the helpers get DRAIN_TIMEOUT_S to finish their chunk,
        the rest are killed, and it propagates, the gate up all the while."""
        self.slot.arm(self.start, self.end, self.claim_size, self.generation)
        with gate.raised():
            self._wake_r, self._wake_w = os.pipe()
        try:
            self._run(gate)
        finally:
            with gate.raised(), self._wake_lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r, self._wake_w = -1, -1

    def _run(self, gate: Gate) -> None:
        c = self.slot.cursor
        try:
            with gate.raised():  # a message cut in half would leave a helper reading forever
                self._send()
            if self.caller_works:
                self._claim(gate)
            self._collect(gate)
            if c.generation == self.generation and c.start < c.end:
                # Every helper replied or vanished holding nothing: what is left is ours to finish
                # (a mutex a dead one left taken is handed over by the OS, repaired).
                self._claim(gate)
        except BaseException:
            with gate.raised():
                stop(c, self.generation)
                self._collect(gate, drain=DRAIN_TIMEOUT_S)
            raise

    def cancel(self) -> None:
        """Stop claims: the engine is closing, or the job's future was cancelled."""
        self.cancelled = True
        stop(self.slot.cursor, self.generation)

    def _send(self) -> None:
        message = RunJob(self.slot.number, self.generation, self.payload)
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)  # once, however many helpers
        for h in self.helpers:
            if not h.send(data, pickled=True):  # died after it was lent: holding nothing, it costs nothing
                h.kill()
                self.dead[h.wid] = h

    def _claim(self, gate: Gate) -> None:
        job = self.job
        done = claim_chunks(
            self.slot, self.generation, self.slot.caller_index, job.thread_fn, job.fn_arg, gate
        )
        before = self.replies.get(CALLER)
        if before is not None:
            before.starts.extend(done.starts)
            done = done._replace(starts=before.starts, busy_s=before.busy_s + done.busy_s)
        self.replies[CALLER] = done
        if done.failure is not None and isinstance(done.failure.error, KeyboardInterrupt):
            raise done.failure.error  # Ctrl-C inside the caller's own thread_fn

    def _collect(self, gate: Gate, drain: float | None = None) -> None:
        """Wait until each helper has replied or died.  Unbounded while helpers work (a chunk
        takes as long as it takes), except that a helper holding nothing of a job with nothing left
        to claim gets ``reply_timeout`` s to answer; with ``drain``, everyone gets that long.

        The caller reads its helpers' replies itself (leader/follower: one hand-off fewer than
        through the manager thread), and wakes for what the manager delivers: deaths, and replies
        of helpers whose pipe went back to it."""
        deadline = None if drain is None else time.monotonic() + drain
        quiet_since: dict[int, float] = {}
        poller, by_fd = select.poll(), None
        while waiting := [h for h in self.helpers if h.wid not in self.replies and h.wid not in self.dead]:
            if deadline is not None and time.monotonic() >= deadline:
                for h in waiting:  # ignored the stop: killed, so nothing of the job runs on
                    h.kill()
                    self.dead[h.wid] = h
                return
            reading = _pipes(h for h in waiting if h.owner_reads)
            if by_fd is None or reading.keys() != by_fd.keys():
                poller, by_fd = select.poll(), reading
                for fd in [self._wake_r, *by_fd]:
                    poller.register(fd, select.POLLIN)
            left = CHECK_S if deadline is None else min(CHECK_S, deadline - time.monotonic())
            ready = poller.poll(max(0.0, left) * 1000)
            if not ready and deadline is None:
                self._kill_the_unresponsive(waiting, quiet_since)
            for fd, _ in ready:
                if fd == self._wake_r:
                    os.read(self._wake_r, 4096)
                    continue
                with gate.raised():  # a message cut in half would be lost to both readers
                    by_fd[fd].take(self._record)

    def _kill_the_unresponsive(self, waiting: list[Helper], quiet_since: dict[int, float]) -> None:
        # Read without the lock: a claimant records its chunk before it moves the cursor.
        c, now = self.slot.cursor, time.monotonic()
        drained = c.start >= c.end or c.generation != self.generation
        for h in waiting:
            if not drained or self.slot.claims.chunk(h.wid) is not None:
                quiet_since.pop(h.wid, None)
            elif now - quiet_since.setdefault(h.wid, now) >= self.reply_timeout:
                # Nothing left to claim and nothing held: killing it loses no work.
                h.kill_unresponsive(self.reply_timeout, stacklevel=4)
                self.dead[h.wid] = h

    def progress(self) -> tuple[int, int]:
        """(claimed, done) of this range now, read without the cursor's lock: the claim loop pays
        nothing for it, and a claim in flight may be seen a moment late."""
        c = self.slot.cursor
        claimed = (self.end - self.start) - max(0, c.end - c.start)
        claimants = [h.wid for h in self.helpers] + [self.slot.caller_index]
        running = sum(end - start for start, end in filter(None, map(self.slot.claims.chunk, claimants)))
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
        rest, the chunks dead helpers held, the failed chunks, and ``also_not_done``."""
        held = {wid: self.slot.claims.chunk(wid) for wid in self.dead}
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
        if self.cancelled:
            return JobCancelledError(f"the job was cancelled; ranges not done: {not_done}", not_done=not_done)
        holders = [h for h in self.dead.values() if held[h.wid]]
        if holders:
            h = holders[0]
            return WorkerDiedError(
                f"worker {h.wid} (pid {h.process.pid}) died of {h.how_it_died()} holding chunk "
                f"{held[h.wid]}; ranges not done: {not_done}",
                pid=h.process.pid,
                exitcode=h.process.exitcode,
                chunk=held[h.wid],
                not_done=not_done,
            )
        if not failed:  # only a failure, a death, a cancel or the closing stop a job
            return PadataError(f"the job stopped with no cause found; ranges not done: {not_done}")
        first = self._first_failed()
        return job_failed(first if first in failed else next(iter(failed)), failed, not_done)

    def _unclaimed(self) -> tuple[int, int] | None:
        """What nobody claimed (clipped: a claimant killed between its two stores leaves the
        cursor's start moved and its size not)."""
        c = self.slot.cursor
        start, end = max(c.start, self.start), min(c.end, self.end)
        return (start, end) if end > start else None

    def _first_failed(self) -> int | None:
        first = self.slot.cursor.first_failed - 1
        if first < 0:
            return None
        return CALLER if first == self.slot.caller_index else first


def _pipes(helpers: Iterable[Helper]) -> dict[int, Helper]:
    """The pipes of ``helpers`` by file descriptor, less any closed meanwhile (a death)."""
    pipes = {}
    for h in helpers:
        with contextlib.suppress(OSError, ValueError):
            pipes[h.conn.fileno()] = h
    return pipes


def job_failed(wid: int, failed: dict[int, ChunkFailure], not_done: Ranges) -> JobFailedError:
    """The JobFailedError for worker ``wid``'s failure (CALLER: the caller's)."""
    failure = failed[wid]
    chunk, exc = failure.chunk, failure.exception()
    who = "the caller" if wid == CALLER else f"worker {wid}"
    if chunk is None:
        error = JobFailedError(
            f"thread_fn or fn_arg could not be loaded in {who}, so it ran nothing there: "
            f"{failure.text} (a module the worker cannot import, or an object whose "
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
            f"thread_fn raised in {who} on chunk {chunk}; ranges not done: {not_done}\n{failure.traceback}",
            chunk=chunk,
            worker=wid,
            not_done=not_done,
        )
    error.__cause__ = exc
    return error


def call_in_caller(
    job: MtJob, start: int, end: int, also_not_done: Ranges
) -> tuple[JobReport, PadataError | None]:
    """One call with the whole range in the calling thread: no chunking, no locking.  Ctrl-C
    propagates; anything else thread_fn raises, SystemExit included, is the job's failure."""
    began = time.perf_counter()
    try:
        result = job.thread_fn(start, end, job.fn_arg)
        if result is not None:
            check_result(result)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        failure = ChunkFailure.caught((start, end), exc)
        not_done = merge_ranges([(start, end), *also_not_done])
        return JobReport(1, end - start, [], 0.0), job_failed(CALLER, {CALLER: failure}, not_done)
    busy = time.perf_counter() - began
    return JobReport(1, end - start, [(start, end, CALLER)], 0.0, {CALLER: busy}), None
