"""The Python peers on the same chunks: multiprocessing's Pool.map, ProcessPoolExecutor,
ThreadPoolExecutor, and joblib where it is installed.  Each is set up as a careful user would:
the pool made, and its workers attached, before any timing."""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..interrupts import deferred_interrupts
from ..job import claim_sequence, plan
from ..mm.runner import NodeWork, node_threads
from ..pool import Padata
from ..shm import SharedArray

Mapper = Callable[[list], object]


def call(task: tuple[Callable, int, int, Any]) -> None:
    """One chunk of a job, as the peers run it: thread_fn's error return is an error here too."""
    thread_fn, start, end, arg = task
    if thread_fn(start, end, arg):
        raise RuntimeError(f"thread_fn failed on [{start}, {end})")


def attach_in_worker(arrays: tuple[SharedArray, ...]) -> None:
    """Pool initializer: map and pre-fault the blocks once per worker, as padata's workers do."""
    for array in arrays:
        array.array  # noqa: B018


def peer_run(work: NodeWork, nodes: int, threads: int, mapper: Mapper, engine: Padata) -> float:
    """The job with the same chunks (the kernel's chunk size for ``threads``) through a peer's map;
    the coordinator's part before and after as padata_mp runs it.  ms."""
    began = time.perf_counter()
    jobs = work.begin(node_threads(engine, range(nodes), threads))
    mapper(
        [
            (job.thread_fn, s, e, job.fn_arg)
            for job in jobs.values()
            for s, e in claim_sequence(job, plan(job, threads).chunk_size)
        ]
    )
    for node in jobs:
        work.end(node)
    return (time.perf_counter() - began) * 1e3


def peers(arrays: tuple[SharedArray, ...], threads: int, stack: contextlib.ExitStack) -> dict[str, Mapper]:
    """name -> mapper, each pool closed by ``stack``.  Ctrl-C is held while they start (a pool
    interrupted half made leaves workers that nobody stops) and their processes start with it
    blocked, so they leave it to us."""
    with deferred_interrupts(), _sigint_blocked():
        return _start_peers(arrays, threads, stack)


def _start_peers(
    arrays: tuple[SharedArray, ...], threads: int, stack: contextlib.ExitStack
) -> dict[str, Mapper]:
    ctx = multiprocessing.get_context("forkserver")
    pool = ctx.Pool(threads, initializer=attach_in_worker, initargs=(arrays,))
    stack.callback(pool.terminate)
    ppe = concurrent.futures.ProcessPoolExecutor(
        threads, mp_context=ctx, initializer=attach_in_worker, initargs=(arrays,)
    )
    stack.callback(ppe.shutdown, cancel_futures=True)
    tpe = stack.enter_context(concurrent.futures.ThreadPoolExecutor(threads))
    made: dict[str, Mapper] = {
        "Pool.map": lambda tasks: pool.map(call, tasks, chunksize=1),
        "ProcessPoolExecutor": lambda tasks: list(ppe.map(call, tasks)),
        "ThreadPoolExecutor": lambda tasks: list(tpe.map(call, tasks)),
    }
    # Warm up: every worker started and attached (pre-faulted) before any timing.
    pool.map(attach_in_worker, [arrays] * threads, chunksize=1)
    list(ppe.map(attach_in_worker, [arrays] * threads))
    try:
        import joblib
    except ImportError:
        return made
    # As a context manager: its workers and its memmapping folder in /dev/shm go on exit.
    parallel = stack.enter_context(joblib.Parallel(n_jobs=threads, backend="loky"))
    parallel(joblib.delayed(attach_in_worker)(arrays) for _ in range(4 * threads))
    made["joblib"] = lambda tasks: parallel(joblib.delayed(call)(t) for t in tasks)
    return made


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread while it starts processes: they inherit the mask (across exec
    too, where loky starts fresh interpreters) and leave Ctrl-C to us.  A Ctrl-C meanwhile stays
    pending until the block ends."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
