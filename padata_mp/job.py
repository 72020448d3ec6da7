"""A multithreaded job and the kernel's rules for cutting it into chunks.

This is kernel/padata.c's padata_do_multithreaded() arithmetic, separated from the processes that
run it so it can be tested and reused on its own.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# "In case threads finish at different times": each process gets about this many chunks.
LOAD_BALANCE_FACTOR = 4

# The cursor lives in a C int64 shared between processes.
MAX_INDEX = 2**63 - 1

# Returns None (or 0) on success, or a non-zero error code: the 2022 RFC's error return.
ThreadFn = Callable[[int, int, Any], "int | None"]
UndoFn = Callable[[int, int, Any], None]


@dataclass(frozen=True)
class MtJob:
    """One job: call ``thread_fn(start, end, fn_arg)`` over the half-open range [start, start + size).

    ``thread_fn`` must handle whatever range it is given, of any length: the kernel promises chunk
    boundaries on ``align`` (except at the job's two ends), never one call per ``min_chunk``, never an
    order, and never a minimum number of processes.  ``max_threads`` is an upper bound only.
    ``numa_aware`` spreads helpers round-robin over the nodes that have CPUs.  ``retry=True`` says
    thread_fn may be called again on a range whose first call may have been cut short (it is
    idempotent), so a helper's death costs time, not the job.

    thread_fn fails by raising or by returning a non-zero int (an error code, as the unmerged 2022
    RFC's ``int (*thread_fn)``); a failing call must leave its own range as it found it.  With an
    ``undo_fn`` (the RFC's), a failure stops the job and ``undo_fn(start, end, fn_arg)`` is called,
    in parallel, on every range that had completed; the error then reports the first failure.

    The job is checked when it is built: bad values raise ValueError or TypeError here, before any
    work starts.
    """

    thread_fn: ThreadFn
    fn_arg: Any = None
    start: int = 0
    size: int = 0
    align: int = 1
    min_chunk: int = 1
    max_threads: int = 1
    numa_aware: bool = False
    retry: bool = False
    undo_fn: UndoFn | None = None

    def __post_init__(self) -> None:
        if not callable(self.thread_fn):
            raise TypeError(f"thread_fn must be callable, got {type(self.thread_fn).__name__}")
        if self.undo_fn is not None and not callable(self.undo_fn):
            raise TypeError(f"undo_fn must be callable or None, got {type(self.undo_fn).__name__}")
        for name in ("start", "size", "align", "min_chunk", "max_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        _require(self.start >= 0, f"start must be >= 0, got {self.start}")
        _require(self.size >= 0, f"size must be >= 0, got {self.size}")
        _require(self.align >= 1, f"align must be >= 1, got {self.align}")
        _require(self.min_chunk >= 0, f"min_chunk must be >= 0, got {self.min_chunk}")
        _require(self.max_threads >= 1, f"max_threads must be >= 1, got {self.max_threads}")
        _require(
            self.start + self.size <= MAX_INDEX,
            f"start + size must be at most 2**63 - 1, got {self.start + self.size}",
        )

    @property
    def end(self) -> int:
        return self.start + self.size


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class Plan:
    """How a job is cut: ``nworks`` processes (the caller included) and chunks of ``chunk_size``.

    A job of size 0 has ``nworks == 0``: nothing is called.  When ``nworks == 1`` the caller makes
    one call with the whole range and ``chunk_size`` is the job's size.
    """

    nworks: int
    chunk_size: int


def kernel_nworks(job: MtJob) -> int:
    """The number of processes the kernel would like for ``job``, before asking for helpers."""
    # max(min_chunk, align): the 2023 fix, so a large align does not ask for too many threads.
    nworks = max(job.size // max(job.min_chunk, job.align), 1)
    return min(nworks, job.max_threads)


def plan(job: MtJob, workers: int | None = None, *, load_balance_factor: int = LOAD_BALANCE_FACTOR) -> Plan:
    """Cut ``job`` by the kernel's rules when ``workers`` processes (caller included) can take part.

    ``workers=None`` means as many as the job asks for.  Fewer workers than the kernel's nworks is
    legal; chunks then grow so each process still gets about ``load_balance_factor`` of them.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
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


def roundup(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


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
    """``(thread_fn, fn_arg)`` as the bytes sent to every helper; TypeError if they cannot go
    (undo_fn too, checked now so a job cannot fail to undo for want of pickling)."""
    try:
        if job.undo_fn is not None:
            pickle.dumps(job.undo_fn, protocol=pickle.HIGHEST_PROTOCOL)
        return pickle.dumps((job.thread_fn, job.fn_arg), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(
            "thread_fn, undo_fn and fn_arg must be picklable so worker processes can receive them "
            f"(use a module-level function, not a lambda or closure): {exc}"
        ) from exc
