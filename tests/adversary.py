"""The adversary's tools: storms of SIGKILLs on an engine's workers, and the check of a job's
outcome against the engine's promise."""

import ctypes
import os
import random
import signal
import threading
import time

import numpy as np
import psutil

from padata_mp import JobFailedError, PadataError


def covered(ranges, n):
    mask = np.zeros(n, bool)
    for s, e in ranges:
        mask[s:e] = True
    return mask


class KillStorm:
    """A thread that SIGKILLs one of the engine's workers every ``every`` (10-60 ms) until stopped."""

    def __init__(self, engine, seed, every=(0.01, 0.06)):
        self.engine, self.random, self.killed, self.every = engine, random.Random(seed), set(), every
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        # SIGKILL lands a moment after kill() returns: let the last one land before going on.
        psutil.wait_procs([p for p in psutil.Process().children(recursive=True) if p.pid in self.killed], 5)

    def _run(self):
        me = psutil.Process()
        while not self.done.wait(self.random.uniform(*self.every)):
            ours = {p.pid for p in me.children(recursive=True)}  # never a pid not (or no longer) ours
            pids = [pid for _, pid, _ in self.engine.workers if pid in ours]
            if pids:
                try:
                    pid = self.random.choice(pids)
                    os.kill(pid, signal.SIGKILL)
                    self.killed.add(pid)
                except ProcessLookupError:
                    pass


def check_outcome(counts, run):
    """Run ``run``; every index counted once, or a PadataError whose not_done covers every index
    not counted; never twice; and nothing changes after the call has returned."""
    try:
        run()
        error = None
    except PadataError as err:
        error = err
    after = counts.array.copy()
    assert after.max() <= 1, "an index was counted twice"
    if error is None:
        assert (after == 1).all(), "success with work undone"
    else:
        assert not isinstance(error, JobFailedError), error
        assert (after[~covered(error.not_done, after.size)] == 1).all(), (
            f"uncounted indices outside not_done: {error}"
        )
    time.sleep(0.02)
    assert (counts.array == after).all(), "memory changed after the call returned"
    return error


def mutex_owner(cursor):
    """The thread id holding a cursor's robust mutex, 0 if free: a robust mutex's futex word
    (the first int of glibc's and musl's pthread_mutex_t) holds its owner's tid."""
    return ctypes.c_uint32.from_address(ctypes.addressof(cursor)).value & 0x3FFFFFFF


def stopped(pid):
    """``pid`` is stopped (state T), or gone."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.NoSuchProcess:
        return True


def stop_a_holder(engine, tries=20000):
    """SIGSTOP a worker while it holds a cursor's mutex; its pid, or None if none was caught."""
    workers = {pid for _, pid, _ in engine.workers}
    cursors = [slot.cursor for slot in engine._slots]
    for _ in range(tries):
        for cursor in cursors:
            pid = mutex_owner(cursor)
            if pid not in workers:
                continue
            os.kill(pid, signal.SIGSTOP)
            while not stopped(pid):
                time.sleep(0.0005)
            if mutex_owner(cursor) == pid:
                return pid
            os.kill(pid, signal.SIGCONT)
    return None
