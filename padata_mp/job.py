"""A multithreaded job and the kernel's rules for cutting it into chunks.

This is kernel/padata.c's padata_do_multithreaded() arithmetic, separated from the processes that
run it so it can be tested and reused on its own.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from .checks import flag, integer, require
from .errors import BadTypeError
from .ranges import roundup

# "In case threads finish at different times": each process gets about this many chunks.
LOAD_BALANCE_FACTOR = 4

# The cursor lives in a C int64 shared between processes.
MAX_INDEX = 2**63 - 1

_NO_SIZE: Any = object()  # MtJob's size when none is given: refused

# Returns None (or 0) on success, or a non-zero error code: the 2022 RFC's error return.
ThreadFn = Callable[[int, int, Any], "int | None"]
UndoFn = Callable[[int, int, Any], None]


@dataclass(frozen=True)
class MtJob:
    """One job: call ``thread_fn(start, end, fn_arg)`` over the half-open range [start, start + size).

    ``thread_fn`` must handle whatever range it is given, of any length: the kernel promises chunk
    boundaries on ``align`` (except at the job's two ends), never one call per ``min_chunk``, never an
    order, and never a minimum number of processes.  ``max_threads`` is an upper bound only.
    ``max_threads`` left at None is the kernel's choice for deferred init: the engine makes it the
    number of CPUs it has on the job's node (or in all, for a job given no node).
    ``numa_aware`` spreads helpers round-robin over the nodes that have CPUs.  ``retry=True`` says
    thread_fn may be called again on a range whose first call may have been cut short (it is
    idempotent), so a helper's death costs time, not the job.

    thread_fn fails by raising or by returning a non-zero int (an error code, as the unmerged 2022
    RFC's ``int (*thread_fn)``); a failing call must leave its own range as it found it.  With an
    ``undo_fn`` (the RFC's), a failure stops the job and ``undo_fn(start, end, fn_arg)`` is called,
    in parallel, on every range that had completed; the error then reports the first failure.

    The job is checked when it is built, before any work starts: a bad value raises BadValueError
    (a ValueError), a wrong type BadTypeError (a TypeError).  Integers may be numpy integers (they
    are stored as ints), never bools; ``numa_aware`` and ``retry`` are bools.
    """

    thread_fn: ThreadFn
    fn_arg: Any = None
    start: int = 0
    size: int = _NO_SIZE  # required: a job that forgot its size would silently do nothing
    align: int = 1
    min_chunk: int = 1
    max_threads: int | None = None
    numa_aware: bool = False
    retry: bool = False
    undo_fn: UndoFn | None = None

    def __post_init__(self) -> None:
        if not callable(self.thread_fn):
            raise BadTypeError(f"thread_fn must be callable, got {type(self.thread_fn).__name__}")
        if self.undo_fn is not None and not callable(self.undo_fn):
            raise BadTypeError(f"undo_fn must be callable or None, got {type(self.undo_fn).__name__}")
        if self.size is _NO_SIZE:
            raise BadTypeError("MtJob needs size=: how many indices, from start, thread_fn covers")
        least = {"start": 0, "size": 0, "align": 1, "min_chunk": 0, "max_threads": 1}
        if self.max_threads is None:
            del least["max_threads"]
        for name, minimum in least.items():  # numpy integers become ints: the cursor is a C int64
            object.__setattr__(self, name, integer(name, getattr(self, name), minimum, MAX_INDEX))
        for name in ("numa_aware", "retry"):
            flag(name, getattr(self, name))
        require(
            self.start + self.size <= MAX_INDEX,
            f"start + size must be at most 2**63 - 1, got {self.start + self.size}",
        )

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Plan:
    """How a job is cut: ``nworks`` processes (the caller included) and chunks of ``chunk_size``.

    A job of size 0 has ``nworks == 0``: nothing is called.  When ``nworks == 1`` the caller makes
    one call with the whole range and ``chunk_size`` is the job's size.
    """

    nworks: int
    chunk_size: int


def kernel_nworks(job: MtJob) -> int:
    """The number of processes the kernel would like for ``job``, before asking for helpers
    (``max_threads=None`` sets no bound here: the engine has made it a number before it asks)."""
    # max(min_chunk, align): the 2023 fix, so a large align does not ask for too many threads.
    nworks = max(job.size // max(job.min_chunk, job.align), 1)
    return nworks if job.max_threads is None else min(nworks, job.max_threads)


def plan(job: MtJob, workers: int | None = None, *, load_balance_factor: int = LOAD_BALANCE_FACTOR) -> Plan:
    """Cut ``job`` by the kernel's rules when ``workers`` processes (caller included) can take part.

    ``workers=None`` means as many as the job asks for.  Fewer workers than the kernel's nworks is
    legal; chunks then grow so each process still gets about ``load_balance_factor`` of them.
    """
    if workers is not None:
        workers = integer("workers", workers, 1)
    if job.size == 0:
        return Plan(nworks=0, chunk_size=0)
    nworks = kernel_nworks(job)
    if workers is not None:
        nworks = min(nworks, workers)
    if nworks == 1:
        return Plan(nworks=1, chunk_size=job.size)
    return Plan(nworks=nworks, chunk_size=chunk_size(job, nworks, load_balance_factor))


def chunk_size(job: MtJob, nworks: int, load_balance_factor: int = LOAD_BALANCE_FACTOR) -> int:
    """The kernel's chunk size for ``job`` shared by ``nworks`` processes; a multiple of align."""
    size = job.size // (nworks * load_balance_factor)
    size = max(size, job.min_chunk)
    # The 2024 fix: min_chunk == 0 gave a zero chunk and a divide-by-zero panic.  The max with 1
    # comes before the roundup so chunks stay aligned.
    size = max(size, 1)
    return roundup(size, job.align)


def next_chunk(start: int, size: int, chunk_size: int) -> int:
    """Length of the chunk claimed at ``start`` with ``size`` left: it ends on a multiple of
    ``chunk_size`` (or at the job's end), so only the first chunk may be short."""
    return min(roundup(start + 1, chunk_size) - start, size)


def claim_sequence(job: MtJob, chunk_size: int) -> list[tuple[int, int]]:
    """Every chunk of ``job`` in the order the shared cursor hands them out."""
    chunks = []
    start, size = job.start, job.size
    while size:
        n = next_chunk(start, size, chunk_size)
        chunks.append((start, start + n))
        start, size = start + n, size - n
    return chunks


def undo_job(job: MtJob, start: int, end: int) -> MtJob:
    """The job that undoes [start, end) of ``job``: undo_fn as its thread_fn, cut the same way."""
    assert job.undo_fn is not None
    return MtJob(
        job.undo_fn,
        job.fn_arg,
        start,
        end - start,
        align=job.align,
        min_chunk=job.min_chunk,
        max_threads=job.max_threads,
        numa_aware=job.numa_aware,
    )


def pickled_call(job: MtJob) -> bytes:
    """``(thread_fn, fn_arg)`` as the bytes sent to every helper (undo_fn is checked now too, so a
    job cannot fail to undo for want of pickling).

    What pickles by reference (module-level functions of importable modules, plain data) does;
    what a worker could not import - functions and classes of ``__main__`` (a script, a notebook,
    ``python -c``), lambdas, closures, nested functions - travels by value with cloudpickle.
    BadTypeError names what cannot travel at all (an open file, a lock, a generator)."""
    if job.undo_fn is not None:
        _dumps("undo_fn", job.undo_fn)
    try:
        return _dumps("thread_fn and fn_arg", (job.thread_fn, job.fn_arg))
    except BadTypeError:
        _dumps("thread_fn", job.thread_fn)  # say which of the two it is
        _dumps("fn_arg", job.fn_arg)
        raise


class _ByValue(cloudpickle.Pickler):
    """cloudpickle, less its copying of files open for reading: a worker would get a snapshot of
    the contents, not the file."""

    def reducer_override(self, obj: object) -> object:
        if isinstance(obj, io.IOBase):
            raise pickle.PicklingError(f"cannot send an open file ({obj!r})")
        return super().reducer_override(obj)


def _dumps(name: str, obj: object) -> bytes:
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        # A reference into __main__ would not load in a worker, whose main module is another one.
        if b"__main__" not in data:
            return data
    except Exception:  # a lambda, a closure, a local object: by value below
        pass
    try:
        out = io.BytesIO()
        _ByValue(out, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return out.getvalue()
    except Exception as exc:
        raise BadTypeError(
            f"{name} cannot be sent to the worker processes: {exc}. Pass what a worker needs to make "
            "it again instead (a path rather than an open file, a SharedArray rather than a lock or "
            "a generator, plain data)"
        ) from exc
