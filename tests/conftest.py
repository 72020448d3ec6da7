import os

import numpy as np
import psutil
import pytest

from padata_mp import Padata, SharedArray, WorkerDiedError


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm"))


def children() -> set[int]:
    # The forkserver and the resource tracker are started once per interpreter and stay: not leaks.
    me = os.getpid()
    return {
        p.pid
        for p in psutil.Process().children(recursive=True)
        if not (
            p.ppid() == me
            and ("forkserver" in " ".join(p.cmdline()) or "resource_tracker" in " ".join(p.cmdline()))
        )
    }


def until_a_helper_dies(engine, counts, job):
    """Run ``job`` until a helper, not the caller, takes its poisoned chunk and dies (the caller
    may take it itself); the WorkerDiedError.  ``counts`` is zeroed before each try."""
    for _ in range(5):
        counts.array[:] = 0
        try:
            engine.do_multithreaded(job)
        except WorkerDiedError as died:
            return died
    raise AssertionError("no helper ever claimed the chunk")


@pytest.fixture(scope="session")
def engine():
    with Padata(2) as e:
        yield e


@pytest.fixture
def counts():
    """A zeroed shared int64 array of 1 Mi entries."""
    with SharedArray.create(1 << 20, np.int64) as block:
        yield block


@pytest.fixture
def no_leaks():
    """Fails the test if it leaves a /dev/shm entry or a child process behind."""
    shm_before, children_before = shm_entries(), children()
    yield
    assert shm_entries() - shm_before == set()
    assert children() - children_before == set()
