"""The cursor's mutex is robust: the OS, not a clock, says when its holder died.  A live holder
that is stopped keeps it however long it is stopped (no claimant takes it from it), and one that
dies holding it hands it to the next claimant, who repairs the claim it was making."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

from padata_mp import MtJob, Padata, SharedArray, WorkerDiedError
from tests import fns
from tests.adversary import check_outcome, stop_a_holder

SIZE = 1 << 15


def stop_one_kill_another(engine, counts, stop_s, kill):
    """Run a job of tiny chunks; SIGSTOP a worker holding the mutex, SIGKILL another one (``kill``),
    SIGCONT the first ``stop_s`` later.  True if a holder was caught."""
    counts.array[:] = 0
    job = MtJob(fns.count, counts, 0, SIZE, max_threads=4)
    caught = []

    def run():
        future = engine.submit(job)
        holder = stop_a_holder(engine)
        if holder is not None:
            caught.append(holder)
            others = [pid for _, pid, _ in engine.workers if pid != holder]
            if kill and others:
                os.kill(others[0], signal.SIGKILL)
            time.sleep(stop_s)
            os.kill(holder, signal.SIGCONT)
        future.result()

    check_outcome(counts, run)
    return bool(caught)


@pytest.mark.parametrize("kill", [True, False], ids=["and-kill-another", "alone"])
def test_a_stopped_holder_keeps_the_mutex(kill):
    # Longer than any claimant's tick, and than the 1 s after which a clock would have decided.
    with Padata(3, load_balance_factor=SIZE // 4) as engine, SharedArray.create(SIZE, np.int64) as counts:
        caught = sum(stop_one_kill_another(engine, counts, 1.2, kill) for _ in range(4))
        assert caught, "no holder was caught in the act: the test proved nothing"


@pytest.mark.slow
def test_a_hundred_stopped_holders():
    with Padata(3, load_balance_factor=SIZE // 4) as engine, SharedArray.create(SIZE, np.int64) as counts:
        caught = sum(stop_one_kill_another(engine, counts, 0.3, kill=True) for _ in range(100))
        assert caught >= 50


def test_a_holder_killed_inside_the_mutex_hands_it_on():
    """SIGKILL a worker while it holds the mutex: the others are told by the OS and go on."""
    with Padata(3, load_balance_factor=SIZE // 4) as engine, SharedArray.create(SIZE, np.int64) as counts:
        caught = 0
        for _ in range(4):
            counts.array[:] = 0

            def run():
                nonlocal caught
                future = engine.submit(MtJob(fns.count, counts, 0, SIZE, max_threads=4))
                holder = stop_a_holder(engine)
                if holder is not None:
                    caught += 1
                    os.kill(holder, signal.SIGKILL)
                    os.kill(holder, signal.SIGCONT)
                future.result(timeout=60)  # no claimant waits for the dead

            check_outcome(counts, run)
        assert caught


# -- what a worker leaves when it dies ---------------------------------------------------------


def test_a_killed_workers_children_die_with_it(tmp_path):
    path = tmp_path / "child"
    with Padata(2) as engine:
        future = engine.submit(MtJob(fns.fork_a_sleeper, str(path), 0, 1))
        deadline = time.monotonic() + 30
        while not (path.exists() and path.read_text()) and time.monotonic() < deadline:
            time.sleep(0.01)
        child = psutil.Process(int(path.read_text()))
        os.kill(child.ppid(), signal.SIGKILL)  # the worker
        with pytest.raises(WorkerDiedError):
            future.result(timeout=30)
        assert psutil.wait_procs([child], timeout=5)[1] == [], "the grandchild lives on"


DEATHS = textwrap.dedent(
    """
    import os, resource, signal, sys, time
    from padata_mp import MtJob, Padata
    from tests import fns

    if __name__ == "__main__":
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        engine = Padata(2)
        job = MtJob(fns.nothing, None, 0, 64, max_threads=2)

        def fds():
            return len(os.listdir("/proc/self/fd"))

        def workers(without=None):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                pids = [pid for _, pid, _ in engine.workers]
                if len(pids) == 2 and without not in pids:
                    return pids
                time.sleep(0.005)
            raise TimeoutError(f"no replacement in 30 s: {pids}")

        before = fds()
        victim = None
        for _ in range(int(sys.argv[1])):
            victim = workers(victim)[0]
            os.kill(victim, signal.SIGKILL)
        engine.do_multithreaded(job)
        print(before, fds(), len(workers(victim)), flush=True)
        engine.close()
    """
)


def test_worker_deaths_leak_no_descriptors(tmp_path):
    script = tmp_path / "deaths.py"
    script.write_text(DEATHS)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run(
        [sys.executable, str(script), "80"], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    before, after, workers = map(int, out.stdout.split())
    assert workers == 2 and after <= before + 2, out.stdout  # a replacement may be mid-start


# -- Ctrl-C while a job is admitted ------------------------------------------------------------


def test_ctrl_c_during_admission_keeps_every_worker_and_slot(monkeypatch):
    with Padata(2) as engine:
        job = MtJob(fns.nothing, None, 0, 64, max_threads=2)
        assert engine.do_multithreaded(job).nworks == 2
        admit = engine._admit

        def interrupted(*args, **kwargs):
            running = admit(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGINT)  # lands while the helpers are lent
            time.sleep(0.01)
            return running

        monkeypatch.setattr(engine, "_admit", interrupted)
        for _ in range(20):
            with pytest.raises(KeyboardInterrupt):
                engine.do_multithreaded(job)
        monkeypatch.undo()
        assert engine.do_multithreaded(job).nworks == 2
        assert len(engine._free_slots) == len(engine._slots)
