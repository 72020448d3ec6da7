"""The engine's promise under abuse: every index is handed out once, a call returns only when its
work is done or raises a PadataError naming what was not, and nothing of a job runs after the call.
Helpers are SIGKILLed at random moments, stopped, and the engine is closed under running jobs."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from padata_mp import (
    EngineClosedError,
    JobFailedError,
    MtJob,
    Padata,
    PadataError,
    SharedArray,
    WorkerDiedError,
)
from padata_mp.mm import Machine, deferred_init
from tests import fns
from tests.adversary import KillStorm, check_outcome, covered
from tests.conftest import until

N = 1 << 18
M = 1 << 20  # the size of the counts fixture
LIVENESS_S = 30  # far beyond any answer the engine waits for: not a speed check, a hang check


def test_kill_storm_never_loses_or_repeats_an_index():
    job_kinds = ("do", "submit")
    with Padata(3) as engine, SharedArray.create(N, np.int64) as counts:
        job = MtJob(fns.count_slowly, (counts, 0.002), 0, N, align=1024, max_threads=4)
        errors = []
        with KillStorm(engine, seed=1) as storm:
            for k in range(40):
                counts.array[:] = 0
                how = job_kinds[k % 2]
                run = (
                    (lambda: engine.do_multithreaded(job))
                    if how == "do"
                    else lambda: engine.submit(job).result()
                )
                errors.append(check_outcome(counts, run))
        assert storm.killed
        assert all(e is None or isinstance(e, (WorkerDiedError, PadataError)) for e in errors)
        # The engine works afterwards, with its full count of workers.
        counts.array[:] = 0
        engine.do_multithreaded(job)
        assert (counts.array == 1).all()
        until(lambda: len({pid for _, pid, _ in engine.workers}) == 3)


def test_kill_storm_during_deferred_init_verifies_or_raises():
    with Padata(3) as engine, Machine.create("8G", 1) as machine:
        engine.attach(*machine.shared_arrays)
        outcomes = []
        with KillStorm(engine, seed=2):
            for _ in range(6):
                machine.reset()
                try:
                    deferred_init(machine, engine, threads=3)
                except PadataError as err:
                    outcomes.append(type(err).__name__)
                    continue
                machine.verify()
                outcomes.append("verified")
        machine.reset()
        deferred_init(machine, engine, threads=3)
        machine.verify()


def stopped_worker(engine):
    pid = engine.workers[0][1]
    os.kill(pid, signal.SIGSTOP)
    return pid


def within(seconds, fn):
    """Run ``fn`` in a thread; fail if it has not returned after ``seconds``."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} still waiting after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_a_stopped_worker_cannot_hang_unlink_attach_or_close(counts):
    with Padata(2, reply_timeout=2.0) as engine:  # time enough for the live one, even on a busy box
        block = SharedArray.create(N, np.int64)
        engine.attach(block)
        victim = stopped_worker(engine)
        with pytest.warns(RuntimeWarning, match="did not answer"):
            within(LIVENESS_S, block.unlink)
        assert victim not in {pid for _, pid, _ in engine.workers}
        until(lambda: len(engine.workers) == 2)  # replaced
        victim = stopped_worker(engine)
        with pytest.warns(RuntimeWarning, match="did not answer"):
            seconds = within(LIVENESS_S, lambda: engine.attach(counts))
        assert len(seconds) == 1  # the other worker attached
        engine.do_multithreaded(MtJob(fns.count, counts, 0, M, align=1024, max_threads=3))
        assert (counts.array == 1).all()
        stopped_worker(engine)
        within(LIVENESS_S, engine.close)
    assert engine.workers == []


def test_a_stopped_helper_holding_nothing_does_not_hang_the_job(counts):
    with Padata(2, reply_timeout=1.0) as engine:
        stopped_worker(engine)
        job = MtJob(fns.count, counts, 0, M, align=1024, max_threads=3)
        with pytest.warns(RuntimeWarning, match="did not answer"):
            within(LIVENESS_S, lambda: engine.do_multithreaded(job))
        assert (counts.array == 1).all()  # the caller and the live helper did it all


@pytest.mark.parametrize("delay", [0.05, 0.15, 0.3])
def test_close_from_another_thread_stops_the_job_with_an_engine_closed_error(counts, delay):
    engine = Padata(2)
    job = MtJob(fns.count_slowly, (counts, 0.1), 0, M, align=1024, max_threads=3)
    closer = threading.Timer(delay, engine.close)
    closer.start()
    with pytest.raises(EngineClosedError, match="engine was closed") as info:
        within(LIVENESS_S, lambda: engine.do_multithreaded(job))
    err = info.value
    assert err.not_done and (counts.array[~covered(err.not_done, M)] == 1).all()
    assert counts.array.max() == 1
    closer.join(LIVENESS_S)
    assert not closer.is_alive() and engine.workers == []


def test_a_fn_arg_that_cannot_be_loaded_in_a_worker_says_so(engine, counts):
    job = MtJob(fns.count_in, fns.LoadsOnlyHere(counts), 0, M, align=1024, max_threads=2)
    with pytest.raises(JobFailedError) as info:
        engine.submit(job).result(timeout=LIVENESS_S)  # a worker is the caller: nothing runs here
    err = info.value
    assert err.chunk is None and err.not_done == [(0, M)] and not counts.array.any()
    assert "could not be loaded" in str(err) and "cannot be loaded in another process" in str(err)


START_LOOP = textwrap.dedent(
    """
    import faulthandler, signal, sys
    from padata_mp import Padata

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if __name__ == "__main__":
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's view of a hang
        signal.signal(signal.SIGTERM, interrupt)  # as padata-mp does
        try:
            Padata(1).close()
            print("ready", flush=True)
            while True:
                Padata(4).close()
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_while_workers_start_prints_one_line(tmp_path, sig):
    script = tmp_path / "start_loop.py"
    script.write_text(START_LOOP)
    for delay in (0.0, 0.01, 0.03, 0.07):
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout.readline() == "ready\n"
        time.sleep(delay)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C: the whole group
        else:
            proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=LIVENESS_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # every thread's stack, then give up on it
            time.sleep(1)
            proc.kill()
            pytest.fail(f"no exit {LIVENESS_S} s after the signal:\n{proc.communicate()[1]}")
        assert proc.returncode == 130 and err == "interrupted\n", err
        deadline = time.monotonic() + LIVENESS_S
        while session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert session(proc.pid) == []  # workers and forkserver followed their coordinator


def session(sid):
    out = subprocess.run(["ps", "-o", "pid=", "-s", str(sid)], capture_output=True, text=True).stdout
    return out.split()
