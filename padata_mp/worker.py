"""The worker side of the engine: the messages, a job slot in shared memory, the claim loop, a
worker's main.

Everything here runs in a worker process, except the claim loop, which a job's caller runs too.
Messages are small named tuples; a job's RunJob is pickled once and sent to each helper as bytes:

    coordinator -> worker               worker -> coordinator
    RunJob(slot, generation, payload)   JobDone(generation, starts, busy_s, failure)
    Attach(blocks)                      Attached(seconds, failed)
    Detach(name)                        Detached()
    Exit()                              Ready(pid)       (once, when it has started)
"""

from __future__ import annotations

import ctypes
import operator
import os
import pickle
import signal
import time
import traceback
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import mutex, shm
from .interrupts import Gate
from .topology import pin_process

PARENT_CHECK_S = 0.5  # a waiting worker checks this often that the coordinator is alive
LOCK_TICK_S = 0.1  # a claimant waiting for the cursor's mutex looks around this often
STOPPED = 0  # the cursor's generation once its job is stopped: no job has this number


class Cursor(ctypes.Structure):
    """One job slot's state in shared memory: its robust mutex and the cursor it guards.  The
    kernel uses the job itself as the cursor: ``start`` rises to ``end`` as chunks are claimed (one
    store a claim, so a claimant killed at any instruction leaves it whole).  Only the job whose
    ``generation`` it holds may claim from it, so a helper of an older job finds nothing, and
    stopping a job is writing STOPPED there.  ``holder`` is the claimant that last took the mutex:
    whoever finds it dead holding the mutex repairs that one's claim record."""

    _fields_ = [
        ("mutex", ctypes.c_ubyte * mutex.MUTEX_BYTES),
        ("start", ctypes.c_int64),
        ("end", ctypes.c_int64),
        ("chunk_size", ctypes.c_int64),
        ("generation", ctypes.c_int64),
        ("first_failed", ctypes.c_int64),  # 1 + the claimant index whose chunk failed first; 0: none
        ("holder", ctypes.c_int64),  # -1: none since the job was armed
        ("padding", ctypes.c_int64 * 2),  # one slot, two cache lines: no false sharing
    ]


class Claims:
    """The chunk each claimant holds now, in shared memory: ``(start, end)``, end == start for none.
    Claimant i (a worker's id, or a slot's caller index) owns ``array[2i]`` and ``array[2i + 1]``."""

    def __init__(self, array: Any):
        self.array = array

    def where(self, index: int) -> tuple[int, int]:
        """The two positions of claimant ``index``'s record (the claim loop writes them inline)."""
        return 2 * index, 2 * index + 1

    def chunk(self, index: int) -> tuple[int, int] | None:
        first, last = self.where(index)
        start, end = self.array[first], self.array[last]
        return (start, end) if end > start else None

    def clear(self, index: int) -> None:
        first, last = self.where(index)
        self.array[last] = self.array[first]


@dataclass(frozen=True)
class Slot:
    """Where one job runs: its cursor (with its mutex, in shared memory), the claims of every
    claimant, and the claims index of the slot's own caller (after the workers')."""

    number: int
    cursor: Cursor
    claims: Claims
    caller_index: int

    @property
    def mutex(self) -> ctypes.c_void_p:
        return ctypes.c_void_p(ctypes.addressof(self.cursor))  # the mutex is the cursor's first field

    def arm(self, start: int, end: int, chunk_size: int, generation: int) -> None:
        """Set the cursor for a new job.  No claimant of the slot is alive now (the last job's
        helpers all replied or died), so no lock is taken; ``holder`` -1 tells whoever finds the
        mutex left by a dead claimant of the last job that no record of this job is that one's."""
        c = self.cursor
        c.start, c.end, c.chunk_size, c.first_failed, c.holder = start, end, chunk_size, 0, -1
        c.generation = generation


def take(slot: Slot, rc: int, give_up: Callable[[], bool]) -> bool:
    """Take the slot's mutex, which TRYLOCK answered ``rc`` (not 0): wait in ticks of LOCK_TICK_S
    until it is ours, or ``give_up()`` says to stop waiting (False).  Found left by a claimant that
    died holding it (the OS says so), the state is repaired first: that claimant's record, if it
    had not moved the cursor past it yet, was never a claim."""
    while rc:
        if rc == mutex.OWNER_DIED:
            c, claims = slot.cursor, slot.claims
            if c.holder >= 0:
                first, last = claims.where(c.holder)
                if claims.array[last] > claims.array[first] >= c.start:
                    claims.array[last] = claims.array[first]
            mutex.make_consistent(slot.mutex)
            return True
        if give_up():
            return False
        rc = mutex.lock_within(slot.mutex, LOCK_TICK_S)
    return True


def stop(cursor: Cursor, generation: int) -> None:
    """No more claims for ``generation`` from ``cursor``.  One store, no lock: it can be made while
    anyone holds the mutex.  A claimant that read the generation just before still records its
    chunk, as if it had claimed a moment earlier."""
    if cursor.generation == generation:
        cursor.generation = STOPPED


def fail(slot: Slot, generation: int, index: int, gone: Callable[[], bool] = lambda: False) -> None:
    """Stop ``generation``'s claims because claimant ``index``'s chunk failed, recorded as the first
    failure if it is (under the mutex; not ranked if the job was stopped meanwhile, or ``gone()``)."""
    c, m = slot.cursor, slot.mutex
    rc = mutex.TRYLOCK(m)
    if take(slot, rc, lambda: c.generation != generation or gone()):
        if c.generation == generation:
            c.first_failed = index + 1
        mutex.UNLOCK(m)
    stop(c, generation)


class RunJob(NamedTuple):
    slot: int
    generation: int
    payload: bytes  # pickled (thread_fn, fn_arg)


class Attach(NamedTuple):
    blocks: list[shm.SharedArray]


class Detach(NamedTuple):
    name: str


class Exit(NamedTuple):
    pass


class Ready(NamedTuple):
    pid: int


class ChunkFailure(NamedTuple):
    """A call that failed: its chunk (None: thread_fn and fn_arg could not even be loaded), the
    exception (in the process that caught it) or its pickle (after the trip to the coordinator:
    loaded only there, where its class may not import), its one-line text and its traceback."""

    chunk: tuple[int, int] | None
    error: BaseException | None
    pickled: bytes | None
    text: str
    traceback: str

    @classmethod
    def caught(cls, chunk: tuple[int, int] | None, exc: BaseException) -> ChunkFailure:
        """The exception being handled.  Its text is kept, not its frames: they reach back to the
        claim loop, which holds the cursor, whose lock (a named semaphore) must not outlive the
        engine."""
        text = traceback.format_exc()
        return cls(chunk, exc.with_traceback(None), None, f"{type(exc).__name__}: {exc}", text)

    def portable(self) -> ChunkFailure:
        """This failure for the trip to the coordinator: the exception as a pickle, or none."""
        try:
            pickled = pickle.dumps(self.error, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pickled = None
        return self._replace(error=None, pickled=pickled)

    def exception(self) -> BaseException:
        """The exception, loaded here if it travelled; a RuntimeError with its text if it cannot be
        (its class does not import here, or its unpickling fails)."""
        if self.error is not None:
            return self.error
        try:
            if self.pickled is not None:
                loaded = pickle.loads(self.pickled)
                if isinstance(loaded, BaseException):
                    return loaded
        except Exception:
            pass
        return RuntimeError(self.text)


class JobDone(NamedTuple):
    generation: int
    starts: array  # the start of each chunk run; each end follows from the chunk size
    busy_s: float
    failure: ChunkFailure | None


class Attached(NamedTuple):
    seconds: float
    failed: str | None  # why a block could not be attached, naming it


class Detached(NamedTuple):
    pass


def claim_chunks(
    slot: Slot,
    generation: int,
    index: int,
    thread_fn: Any,
    arg: Any,
    gate: Gate | None = None,
    gone: Callable[[], bool] = lambda: False,
) -> JobDone:
    """The kernel's padata_mt_helper(): claim the next chunk under the cursor's mutex, run it,
    repeat, while the cursor still belongs to ``generation``.

    The claimant's record in ``slot.claims`` is written under the mutex before the cursor moves, so
    a claimant killed at any instruction leaves its chunk either unclaimed or recorded.  While the
    mutex is held the SIGINT ``gate`` is up, so Ctrl-C never leaves it taken.  A claimant that finds
    the mutex taken waits for it in ticks, and stops waiting if the job was stopped, a Ctrl-C is
    held (the caller's), or ``gone()`` (a worker's coordinator is gone).  A holder that died is
    reported by the OS to the next locker (``take``): nothing waits for the dead.
    """
    # The engine's hot path, tuned for jobs of tiny chunks: locals bound once, the mutex's two C
    # calls made directly, job.next_chunk() inlined.
    gate = gate or Gate()  # one that nothing opens, in workers and threads other than the main one
    gate_up, gate_held = gate.up, gate.held
    c, m, held = slot.cursor, slot.mutex, slot.claims.array
    trylock, unlock, chunk_size = mutex.TRYLOCK, mutex.UNLOCK, c.chunk_size
    first, last = slot.claims.where(index)
    starts, began, me = array("q"), time.perf_counter(), os.getpid()
    start = end = 0

    def give_up() -> bool:
        return c.generation != generation or gate_held[0] or gone()

    try:
        while True:
            gate_up[0] = True
            rc = trylock(m)
            if rc and not take(slot, rc, give_up):
                gate_up[0] = False
                break
            c.holder = index
            start, stop_at = c.start, c.end
            if start >= stop_at or c.generation != generation:
                unlock(m)
                gate_up[0] = False
                break
            end = min((start // chunk_size + 1) * chunk_size, stop_at)
            held[first], held[last] = start, end
            c.start = end
            unlock(m)
            gate_up[0] = False
            if gate_held[0]:
                gate.lower()  # Ctrl-C came while the mutex was held: raised now, the chunk recorded
            result = thread_fn(start, end, arg)
            if result is not None:
                check_result(result)
            held[last] = start
            starts.append(start)
    except BaseException as exc:
        if os.getpid() != me:  # thread_fn forked, and its child left it by an exception
            os._exit(exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1)
        # The mutex is not held here (the gate was down when this was raised); it is taken again,
        # with the gate up, to rank the failure.
        was, gate_up[0] = gate_up[0], True
        fail(slot, generation, index, gone)
        gate_up[0] = was
        return JobDone(
            generation, starts, time.perf_counter() - began, ChunkFailure.caught((start, end), exc)
        )
    return JobDone(generation, starts, time.perf_counter() - began, None)


class ErrorReturn(Exception):
    """thread_fn returned a non-zero error code: carried like an exception, reported as a code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def check_result(result: object) -> None:
    """What thread_fn returned, when not None: an integer (an int, or anything with ``__index__``
    such as numpy's, never a bool) is the RFC's error code, 0 for success; anything else is a
    mistake, raised as a TypeError that says what came back."""
    try:
        if isinstance(result, bool):
            raise TypeError
        code = operator.index(result)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            "thread_fn must return None or an int error code (padata ignores results), got "
            f"{type(result).__name__} {result!r:.80}"
        ) from None
    if code:
        raise ErrorReturn(code)


def worker_main(
    wid: int, cpus: tuple[int, ...], conn: Any, cursors: Any, claims: Any, coordinator: int
) -> None:
    """A worker's life: pin, say Ready, then answer one message at a time until Exit, a closed
    pipe, or the coordinator's death.  A process forked by thread_fn never speaks on the pipe."""
    # A process group of its own: a kill takes what thread_fn forked with it.
    os.setpgid(0, 0)
    # Pinned first, before numpy starts threads or shared memory is touched (first-touch placement).
    pin_process(cpus)
    # Ctrl-C reaches the whole process group: the coordinator alone handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    me = os.getpid()
    slots = [Slot(i, cursor, Claims(claims), -1) for i, cursor in enumerate(cursors)]

    def gone() -> bool:
        return os.getpid() != me or not _alive(coordinator)

    try:
        conn.send(Ready(me))
    except OSError:  # the coordinator gave up on this start (Ctrl-C, or its own end)
        return
    while True:
        try:
            if not conn.poll(PARENT_CHECK_S):
                if gone():
                    return
                continue
            message = conn.recv()
        except (EOFError, OSError):  # the coordinator is gone (a reset pipe, when it died mid-send)
            return
        if isinstance(message, Exit):
            return
        answer = _answer(wid, message, slots, gone)
        del message  # a job's payload is dropped with the job, not kept until the next message
        if os.getpid() != me:
            os._exit(0)  # thread_fn forked, and its child came back here: it has nothing to say
        try:
            conn.send(answer)
        except OSError:
            return
        del answer


def _answer(wid: int, message: Any, slots: list[Slot], gone: Any) -> Any:
    if isinstance(message, RunJob):
        return _run_job(wid, slots[message.slot], message.generation, message.payload, gone)
    if isinstance(message, Attach):
        began = time.perf_counter()
        for block in message.blocks:
            try:
                block.array  # noqa: B018 - attaching and pre-faulting is the point
            except (OSError, ValueError) as exc:
                return Attached(time.perf_counter() - began, f"cannot attach {block.name}: {exc}")
        return Attached(time.perf_counter() - began, None)
    if isinstance(message, Detach):
        shm.detach(message.name)
        return Detached()
    raise AssertionError(f"unknown message {message!r}")


def _run_job(wid: int, slot: Slot, generation: int, payload: bytes, gone: Any) -> JobDone:
    try:
        thread_fn, arg = pickle.loads(payload)
    except BaseException as exc:
        fail(slot, generation, wid, gone)
        return JobDone(generation, array("q"), 0.0, ChunkFailure.caught(None, exc).portable())
    done = claim_chunks(slot, generation, wid, thread_fn, arg, gone=gone)
    return done._replace(failure=done.failure.portable()) if done.failure else done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
