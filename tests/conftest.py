import os
import time

import numpy as np
import psutil
import pytest

from padata_mp import Padata, SharedArray, WorkerDiedError

SHM = "/dev/shm"


def process_tree() -> set[int]:
    """This process and every process under it."""
    return {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}


def mapped_files(pid: int) -> set[str]:
    """The paths of the files ``pid`` maps (none once it is gone)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return {fields[5] for fields in (line.split(maxsplit=5) for line in f) if len(fields) == 6}
    except OSError:
        return set()


class OwnShm:
    """The /dev/shm entries that this test's own processes made since it was created, whatever
    other programs do beside it: blocks named for one of those pids (padata_mp_<pid>_...), and
    multiprocessing's named semaphores (sem.mp-...) that one of them still maps.  A process that
    has exited cannot map anything: its semaphores, if it leaked any, are its resource tracker's
    to unlink, and the tracker says so on stderr."""

    def __init__(self) -> None:
        self.before = set(os.listdir(SHM))

    def left(self, *pids: int) -> set[str]:
        ours = process_tree() | set(pids)
        new = set(os.listdir(SHM)) - self.before
        blocks = {
            n
            for n in new
            if n.startswith("padata_mp_") and n.split("_")[2].isdigit() and int(n.split("_")[2]) in ours
        }
        sems = {n for n in new if n.startswith("sem.")}
        mapped = set().union(*(mapped_files(pid) for pid in ours)) if sems else set()
        return blocks | {n for n in sems if f"{SHM}/{n}" in mapped}


def children() -> set[int]:
    # The forkserver and the resource tracker are started once per interpreter and stay: not leaks.
    me, found = os.getpid(), set()
    for p in psutil.Process().children(recursive=True):
        try:
            command = " ".join(p.cmdline())
            if not (p.ppid() == me and ("forkserver" in command or "resource_tracker" in command)):
                found.add(p.pid)
        except psutil.NoSuchProcess:  # exited while we looked: not a leak
            pass
    return found


def until(predicate, timeout=30.0):
    """Wait for ``predicate()`` (a replacement worker, say: the engine starts it in the background)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.01)


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
    """Fails the test if it leaves a /dev/shm entry or a child process of its own behind."""
    shm, children_before = OwnShm(), children()
    yield
    assert shm.left() == set()
    assert children() - children_before == set()
