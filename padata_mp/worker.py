"""The worker side of the engine: the messages, the shared cursor, the claim loop, a worker's main.

Everything here runs in a worker process, except the claim loop, which a job's caller runs too.
Messages are small named tuples, pickled once per job (never per chunk):

    coordinator -> worker        worker -> coordinator
    RunJob(slot, generation, payload)   JobDone(generation, starts, busy_s, failure)
    Attach(blocks)                      Attached(seconds)
    Detach(name)                        Detached()
    Exit()                              Ready(pid)       (once, when it has started)
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import time
import traceback
from array import array
from typing import Any, NamedTuple

from . import shm
from .topology import pin_process

PARENT_CHECK_S = 0.5  # an idle worker checks this often that the coordinator is alive
STOPPED = 0  # the cursor's generation once its job is aborted: no job has this number


class Cursor(ctypes.Structure):
    """One job slot's cursor.  The kernel uses the job itself as the cursor: start and size shrink
    as chunks are claimed.  Only the job whose ``generation`` it holds may claim from it, so a
    helper of an older job finds nothing, and an abort is writing STOPPED there."""

    _fields_ = [
        ("start", ctypes.c_int64),
        ("size", ctypes.c_int64),
        ("chunk_size", ctypes.c_int64),
        ("generation", ctypes.c_int64),
        ("first_failed", ctypes.c_int64),  # 1 + the claimant index whose chunk failed first; 0: none
    ]


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
    exception without its frames, and the traceback as text."""

    chunk: tuple[int, int] | None
    error: BaseException
    traceback: str

    @classmethod
    def caught(cls, chunk: tuple[int, int] | None, exc: BaseException) -> ChunkFailure:
        """The exception being handled.  Its text is kept, not its frames: they reach back to the
        claim loop, which holds the cursor, whose lock (a named semaphore) must not outlive the
        engine."""
        text = traceback.format_exc()
        return cls(chunk, exc.with_traceback(None), text)


class JobDone(NamedTuple):
    generation: int
    starts: array  # the start of each chunk run; each end follows from the chunk size
    busy_s: float
    failure: ChunkFailure | None


class Attached(NamedTuple):
    seconds: float


class Detached(NamedTuple):
    pass


def claim_chunks(cursor: Any, generation: int, held: Any, index: int, thread_fn: Any, arg: Any) -> JobDone:
    """The kernel's padata_mt_helper(): claim the next chunk under the cursor's lock, run it, repeat,
    while the cursor still belongs to ``generation``.

    ``held[2 * index : 2 * index + 2]`` records the chunk this claimant holds (end == start: none),
    written under the lock before the cursor moves, so a claimant killed at any instruction leaves
    its chunk either unclaimed or recorded.
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
            if size == 0 or c.generation != generation:
                release()
                return JobDone(generation, starts, time.perf_counter() - began, None)
            start = c.start
            end = min((start // chunk_size + 1) * chunk_size, start + size)
            held[slot_start], held[slot_end] = start, end
            c.start, c.size = end, size - (end - start)
            release()
            result = thread_fn(start, end, arg)
            if result is not None:
                check_result(result)
            held[slot_end] = start
            starts.append(start)
    except BaseException as exc:
        stop(cursor, generation, index)
        failure = ChunkFailure.caught((start, end), exc)
        return JobDone(generation, starts, time.perf_counter() - began, failure)


def stop(cursor: Any, generation: int, index: int | None = None) -> None:
    """Stop ``generation``'s claims (if the cursor is still its); ``index``: the claimant whose chunk
    failed, kept if it is the first."""
    with cursor.get_lock():
        c = cursor.get_obj()
        if c.generation == generation:
            c.generation = STOPPED
            if index is not None:
                c.first_failed = index + 1


class ErrorReturn(Exception):
    """thread_fn returned a non-zero error code: carried like an exception, reported as a code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def check_result(result: object) -> None:
    """What thread_fn returned, when not None: 0 is success, a non-zero int the RFC's error code,
    anything else a mistake (padata ignores results)."""
    if result != 0:
        if isinstance(result, int) and not isinstance(result, bool):
            raise ErrorReturn(result)
        raise TypeError(
            "thread_fn must return None or an int error code (padata ignores results), got "
            f"{type(result).__name__}"
        )


def worker_main(
    wid: int, cpus: tuple[int, ...], conn: Any, cursors: list, held: Any, coordinator: int
) -> None:
    """A worker's life: pin, say Ready, then answer one message at a time until Exit, a closed
    pipe, or the coordinator's death."""
    # Pinned first, before numpy starts threads or shared memory is touched (first-touch placement).
    pin_process(cpus)
    # Ctrl-C reaches the whole process group: the coordinator alone handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send(Ready(os.getpid()))
    while True:
        try:
            if not conn.poll(PARENT_CHECK_S):
                if not _alive(coordinator):
                    return
                continue
            message = conn.recv()
        except (EOFError, OSError):  # the coordinator is gone (a reset pipe, when it died mid-send)
            return
        if isinstance(message, Exit):
            return
        try:
            conn.send(_answer(wid, message, cursors, held))
        except OSError:
            return


def _answer(wid: int, message: Any, cursors: list, held: Any) -> Any:
    if isinstance(message, RunJob):
        return _run_job(wid, cursors[message.slot], message.generation, held, message.payload)
    if isinstance(message, Attach):
        began = time.perf_counter()
        for block in message.blocks:
            block.array  # noqa: B018 - attaching and pre-faulting is the point
        return Attached(time.perf_counter() - began)
    if isinstance(message, Detach):
        shm.detach(message.name)
        return Detached()
    raise AssertionError(f"unknown message {message!r}")


def _run_job(wid: int, cursor: Any, generation: int, held: Any, payload: bytes) -> JobDone:
    try:
        thread_fn, arg = pickle.loads(payload)
    except BaseException as exc:
        stop(cursor, generation, wid)
        failure = ChunkFailure.caught(None, exc)
        return JobDone(generation, array("q"), 0.0, portable(failure))
    done = claim_chunks(cursor, generation, held, wid, thread_fn, arg)
    return done._replace(failure=portable(done.failure)) if done.failure else done


def portable(failure: ChunkFailure) -> ChunkFailure:
    """A failure that pickles: the exception itself when it can travel, else a RuntimeError."""
    try:
        pickle.loads(pickle.dumps(failure.error))
    except Exception:
        return failure._replace(error=RuntimeError(f"{type(failure.error).__name__}: {failure.error}"))
    return failure


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
