"""The engine's promise on every path: a call returns only when its work is done, or raises a
PadataError naming what was not; nothing of a job runs after the call; no wait without bound;
nothing left behind.  Each test here is a way the promise was once broken."""

import gc
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import psutil
import pytest

import padata_mp.pool
from padata_mp import (
    JobCancelledError,
    JobFailedError,
    MtJob,
    Padata,
    PadataError,
    SharedArray,
)
from padata_mp.mm import Machine, VerifyError, deferred_init
from tests import fns
from tests.adversary import KillStorm, check_outcome, covered
from tests.conftest import SHM, children, until

N = 1 << 16
M = 1 << 20  # the size of the counts fixture
LIVENESS_S = 30  # a hang check, far beyond any bounded wait of the engine


def fresh_kill(engine):
    """SIGKILL one idle worker and return at once, before the engine can have seen it die."""
    pid = engine.workers[0][1]
    os.kill(pid, signal.SIGKILL)
    return pid


# -- a helper lost before the job reached it ---------------------------------------------------


@pytest.mark.parametrize("how", ["do", "submit"])
def test_a_helper_dead_before_the_job_reached_it_costs_nothing(counts, how):
    """It held nothing: what it would have claimed is done by the others, or by the caller's side
    (a submitted job of one helper has no other claimant)."""
    with Padata(2) as engine:
        for _ in range(8):
            until(lambda: len(engine.workers) == 2)
            counts.array[:] = 0
            fresh_kill(engine)
            threads = 3 if how == "do" else 1
            job = MtJob(fns.count, counts, 0, M, align=1024, max_threads=threads)
            report = engine.do_multithreaded(job) if how == "do" else engine.submit(job).result()
            assert (counts.array == 1).all(), report
            assert sum(e - s for s, e, _ in report.chunks) <= M


def test_submit_with_one_helper_under_a_kill_storm_never_lies():
    with Padata(2) as engine, SharedArray.create(N, np.int64) as counts:
        job = MtJob(fns.count, counts, 0, N, align=64, max_threads=1)
        with KillStorm(engine, seed=7, every=(0.001, 0.01)):
            for _ in range(150):
                counts.array[:] = 0
                check_outcome(counts, lambda: engine.submit(job).result())


@pytest.mark.slow
@pytest.mark.parametrize("every", [(0.001, 0.01), (0.01, 0.06)])
def test_1500_submits_of_one_helper_under_kill_storms_never_lie(every):
    with Padata(2) as engine, SharedArray.create(4096, np.int64) as counts:
        job = MtJob(fns.count, counts, 0, 4096, max_threads=1)
        with KillStorm(engine, seed=11, every=every):
            for _ in range(1500):
                counts.array[:] = 0
                check_outcome(counts, lambda: engine.submit(job).result())


@pytest.mark.slow
def test_two_node_deferred_init_with_one_thread_under_kills_verifies_or_raises():
    with Padata(2) as engine, Machine.create("4G", 2) as machine:
        state = machine.save_state()
        with KillStorm(engine, seed=5, every=(0.01, 0.06)):
            for _ in range(60):
                machine.restore_state(state)
                try:
                    deferred_init(machine, engine, threads=1)
                except PadataError:
                    continue
                try:
                    machine.verify()
                except VerifyError as err:
                    pytest.fail(f"deferred_init returned, but the memory says otherwise: {err}")


def test_a_replacement_whose_start_hangs_holds_up_nothing_and_is_reported(counts, monkeypatch):
    """The forkserver stopped: a dead worker's replacement cannot start.  Jobs go on with the
    workers there are, and a warning says the start is overdue; once it can start, it does."""
    monkeypatch.setattr(padata_mp.pool, "START_TIMEOUT_S", 1.0)
    job = MtJob(fns.count, counts, 0, M, align=1024, max_threads=3)
    with Padata(2) as engine:
        (forkserver,) = [p for p in psutil.Process().children() if "forkserver" in " ".join(p.cmdline())]
        forkserver.suspend()
        try:
            fresh_kill(engine)
            with pytest.warns(RuntimeWarning, match="has not started within 1 s"):
                began = time.monotonic()
                while time.monotonic() - began < 2.5:
                    counts.array[:] = 0
                    engine.do_multithreaded(job)
                    assert (counts.array == 1).all()
        finally:
            forkserver.resume()
        until(lambda: len(engine.workers) == 2)


# -- what the workers send back ----------------------------------------------------------------


def test_an_exception_the_caller_cannot_load_is_a_job_failure_with_its_text(tmp_path):
    (tmp_path / "only_in_worker.py").write_text("class Odd(Exception):\n    pass\n")
    with Padata(1) as engine, SharedArray.create(64, np.int64) as block:
        job = MtJob(fns.raise_unloadable, (str(tmp_path), os.getpid()), 0, 64, max_threads=1)
        with pytest.raises(JobFailedError, match="Odd: odd one") as info:
            engine.submit(job).result(timeout=LIVENESS_S)
        assert info.value.not_done == [(0, 64)]
        del block


@pytest.mark.parametrize(
    "value", [False, True, 0.0, 1.5, np.zeros(1), np.zeros(3), np.bool_(False), "0", [0]], ids=repr
)
def test_what_is_not_none_or_an_integer_is_a_job_failure(value, engine):
    job = MtJob(fns.returns_arg, value, 0, 64, max_threads=1)
    with pytest.raises(JobFailedError, match="must return None or an int") as info:
        engine.do_multithreaded(job)
    assert info.value.not_done == [(0, 64)]


@pytest.mark.parametrize("value", [np.int64(-5), np.int32(-5), -5])
def test_numpy_integers_are_error_codes(value, engine):
    with pytest.raises(JobFailedError) as info:
        engine.do_multithreaded(MtJob(fns.returns_arg, value, 0, 64, max_threads=1))
    assert info.value.error == -5


@pytest.mark.parametrize("value", [np.int64(0), 0, None])
def test_zero_and_none_are_success(value, engine):
    engine.do_multithreaded(MtJob(fns.returns_arg, value, 0, 64, max_threads=2))


@pytest.mark.parametrize("threads", [1, 3])
def test_system_exit_in_thread_fn_is_a_job_failure_in_the_caller_and_in_helpers(threads, counts):
    with Padata(2) as engine:
        for where in (0, M - 1):  # the caller's first chunk, a helper's last (most likely)
            with pytest.raises(JobFailedError, match="SystemExit") as info:
                engine.do_multithreaded(MtJob(fns.exit_at, where, 0, M, align=1024, max_threads=threads))
            assert any(s <= where < e for s, e in info.value.not_done)


def test_a_child_forked_by_thread_fn_never_speaks_for_its_worker(counts):
    with Padata(1) as engine:
        report = engine.submit(MtJob(fns.fork_and_exit, counts, 0, 4096, align=1024, max_threads=1)).result()
        assert (counts.array[:4096] == 1).all() and report.nworks == 1
        engine.do_multithreaded(MtJob(fns.count, counts, 0, M, align=1024, max_threads=2))
        assert (counts.array[:4096] == 2).all() and (counts.array[4096:] == 1).all()


def test_workers_drop_a_job_payload_when_the_job_ends():
    payload = os.urandom(64 << 20)
    with Padata(1) as engine:
        worker = psutil.Process(engine.workers[0][1])
        before = worker.memory_info().rss
        engine.submit(MtJob(fns.big_payload, payload, 0, 64, max_threads=1)).result()
        assert worker.memory_info().rss - before < (32 << 20)


# -- attach ------------------------------------------------------------------------------------


def test_attach_of_an_unlinked_block_names_it_and_keeps_the_workers():
    with Padata(2) as engine:
        block = SharedArray.create(1024, np.int64)
        block.unlink()
        pids = engine.workers
        with pytest.raises(PadataError, match=block.name):
            engine.attach(block)
        assert engine.workers == pids


# -- cancel, and engines dropped ---------------------------------------------------------------


def test_cancel_stops_a_running_job_and_names_what_was_not_done(counts):
    with Padata(2) as engine:
        future = engine.submit(MtJob(fns.count_slowly, (counts, 0.3), 0, M, align=1024, max_threads=3))
        time.sleep(0.2)
        assert future.cancel()
        with pytest.raises(JobCancelledError) as info:
            future.result(timeout=LIVENESS_S)
        after = counts.array.copy()
        not_done = covered(info.value.not_done, M)
        assert not_done.any() and (after[~not_done] == 1).all() and (after[not_done] == 0).all()
        time.sleep(0.1)
        assert (counts.array == after).all()  # nothing of it ran on


def test_cancel_of_a_job_just_submitted_stops_it(counts):
    with Padata(2) as engine:
        future = engine.submit(MtJob(fns.count_slowly, (counts, 0.05), 0, M, align=1024, max_threads=3))
        assert future.cancel()
        with pytest.raises(JobCancelledError) as info:
            future.result(timeout=LIVENESS_S)
        assert (counts.array[~covered(info.value.not_done, M)] == 1).all()


def test_an_engine_dropped_unclosed_stops_its_workers_with_a_resource_warning():
    before = children()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            engine = Padata(2)
            assert "2 workers" in repr(engine) and "open" in repr(engine)
        del engine
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    until(lambda: children() - before == set())


# -- Ctrl-C ------------------------------------------------------------------------------------

INTERRUPTED = textwrap.dedent(
    """
    import signal, sys, time
    import numpy as np
    from padata_mp import MtJob, Padata, SharedArray
    from tests import fns

    in_engine = [False]


    def interrupt(signum, frame):
        # The program's own handler, which the engine's gate calls where it may raise.  A signal
        # that lands in this script's own loop (its jumps cannot be covered by a try) is not what
        # is tested: counted, not raised.
        if in_engine[0]:
            raise KeyboardInterrupt


    if __name__ == "__main__":
        signal.signal(signal.SIGINT, interrupt)
        # Chunks of 4 indices: the cursor's lock is hot.
        with Padata(2, load_balance_factor=1 << 14) as engine, SharedArray.create(1 << 16, "i8") as counts:
            job = MtJob(fns.count, counts, 0, 1 << 16, max_threads=3)
            print("ready", flush=True)
            interrupts, changed = 0, False
            deadline = time.monotonic() + float(sys.argv[1])
            while time.monotonic() < deadline:
                try:
                    in_engine[0] = True
                    engine.do_multithreaded(job)
                    if sys.argv[2] == "submit":
                        engine.submit(job).result()
                    in_engine[0] = False
                except KeyboardInterrupt:
                    in_engine[0] = False
                    interrupts += 1
                    frozen = counts.array.copy()
                    time.sleep(0.05)
                    changed = changed or not (counts.array == frozen).all()
            if changed:
                print("memory changed after the raise", flush=True)
                sys.exit(1)
            counts.array[:] = 0
            engine.do_multithreaded(job)  # usable at once
            assert (counts.array == 1).all()
            print(f"ok {interrupts}", flush=True)
    """
)


def run_interrupted(tmp_path, seconds, how, pattern):
    """A coordinator running jobs of one-index chunks for ``seconds``, SIGINTed at the moments
    ``pattern`` gives; it must report each raise with memory frozen, then work and exit."""
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(seconds), how], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        for pause in pattern:
            time.sleep(pause)
            proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=seconds + LIVENESS_S)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.startswith("ok"), out
    return int(out.split()[1])


@pytest.mark.parametrize("how", ["do", "submit"])
def test_single_interrupts_during_tiny_chunk_jobs_raise_with_memory_frozen(tmp_path, how):
    rng = random.Random(3)
    assert run_interrupted(tmp_path, 4.0, how, [rng.uniform(0.2, 0.6) for _ in range(5)]) >= 1


def test_a_storm_of_interrupts_leaves_no_lock_held(tmp_path):
    rng = random.Random(4)
    run_interrupted(tmp_path, 4.0, "do", [rng.uniform(0.05, 0.3) for _ in range(12)])


@pytest.mark.slow
def test_a_hundred_interrupts_and_five_storms(tmp_path):
    rng = random.Random(8)
    run_interrupted(tmp_path, 60.0, "do", [rng.uniform(0.1, 0.5) for _ in range(100)])
    for _ in range(5):
        run_interrupted(tmp_path, 5.0, "submit", [rng.uniform(0.05, 0.3) for _ in range(15)])


UNLINK = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from padata_mp import Padata, SharedArray

    if __name__ == "__main__":
        engine = Padata(2)
        block = SharedArray.create(1 << 30, np.uint8)
        if sys.argv[1] == "unlink":
            engine.attach(block)
        workers = [pid for _, pid, _ in engine.workers]
        print(block.name, flush=True)
        try:
            sys.stdin.readline()
            if sys.argv[1] == "unlink":
                block.unlink()  # about 0.2 s for 1 GiB here, most of it in the workers
            else:
                engine.attach(block)  # about 0.3 s: each worker maps and pre-faults it
            time.sleep(60)  # a call done before the Ctrl-C came: it lands here, not in the checks
        except KeyboardInterrupt:
            pass
        path = "/dev/shm/" + block.name
        if os.path.exists(path):  # interrupted before unlink began, or an attach: unlinkable
            block.unlink()
        # Idle workers unmap it before unlink returns; one still answering the interrupted attach
        # unmaps it when it is given back, within the attach's bound.
        deadline = time.monotonic() + 10
        while (mapped := [p for p in workers if path in open(f"/proc/{p}/maps").read()]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)
        engine.close()
        print("exists" if os.path.exists(path) else "gone", "mapped" if mapped else "unmapped")
    """
)


@pytest.mark.parametrize("call", ["unlink", "attach"])
def test_ctrl_c_in_unlink_or_attach_of_a_large_block_leaves_nothing(tmp_path, call):
    script = tmp_path / "unlink.py"
    script.write_text(UNLINK)
    for delay in (0.0, 0.01, 0.05, 0.1, 0.15):
        proc = subprocess.Popen(
            [sys.executable, str(script), call], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        name = proc.stdout.readline().strip()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=LIVENESS_S)
        assert proc.returncode == 0 and out.strip() == "gone unmapped", out
        assert not os.path.exists(f"{SHM}/{name}")
        assert [n for n in os.listdir(SHM) if n.startswith(f"padata_mp_{proc.pid}_")] == []


# -- a coordinator killed ----------------------------------------------------------------------

KILLED = textwrap.dedent(
    """
    import numpy as np
    from padata_mp import MtJob, Padata, SharedArray
    from tests import fns

    if __name__ == "__main__":
        engine = Padata(2, load_balance_factor=1 << 14)  # chunks of 1: the lock is hot
        counts = SharedArray.create(1 << 16, np.int64)
        job = MtJob(fns.count, counts, 0, 1 << 16, max_threads=3)
        engine.do_multithreaded(job)
        print("ready", flush=True)
        while True:
            engine.do_multithreaded(job)
    """
)


def session(sid):
    """The live processes of session ``sid`` (an exited one whose new parent has not reaped it yet
    is gone)."""
    out = subprocess.run(["ps", "-o", "pid=,stat=", "-s", str(sid)], capture_output=True, text=True).stdout
    return [int(pid) for pid, stat in (line.split() for line in out.splitlines()) if not stat.startswith("Z")]


def semaphores(pids):
    """The named semaphores these processes map."""
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                found |= {line.split()[-1] for line in f if "/dev/shm/sem." in line}
        except OSError:
            pass
    return found


def kill_coordinators(tmp_path, count, seed):
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    rng = random.Random(seed)
    for _ in range(count):
        proc = subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
        assert proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.0, 0.2))
        sems = semaphores(session(proc.pid))
        proc.kill()
        proc.wait()
        killed = time.monotonic()
        while session(proc.pid) and time.monotonic() - killed < 2.0:
            time.sleep(0.02)
        assert session(proc.pid) == [], "workers, forkserver or tracker outlived the coordinator by 2 s"
        assert [n for n in os.listdir(SHM) if n.startswith(f"padata_mp_{proc.pid}_")] == []
        assert not any(os.path.exists(s) for s in sems)  # the cursors' mutexes are no named semaphores


def test_a_killed_coordinator_takes_its_workers_forkserver_and_tracker_with_it(tmp_path):
    kill_coordinators(tmp_path, 4, seed=1)


@pytest.mark.slow
def test_a_hundred_killed_coordinators(tmp_path):
    kill_coordinators(tmp_path, 100, seed=2)


# -- the command line's first moments ----------------------------------------------------------


def catches_sigterm(pid: int) -> bool:
    """padata_mp.__main__ has run its first lines: the process catches SIGTERM (Python alone
    does not).  A Ctrl-C before that lands in the interpreter's own start, not in padata-mp."""
    try:
        with open(f"/proc/{pid}/status") as status:
            caught = next(line for line in status if line.startswith("SigCgt:"))
    except OSError:  # it has exited: the caller sees that
        return False
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def test_ctrl_c_in_the_first_moments_of_padata_mp_is_one_line():
    command = os.path.join(os.path.dirname(sys.executable), "padata-mp")
    rng = random.Random(6)
    for _ in range(12):
        proc = subprocess.Popen(
            [command, "topology"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        until(lambda p=proc: p.poll() is not None or catches_sigterm(p.pid), timeout=LIVENESS_S)
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=LIVENESS_S)
        assert "Traceback" not in err, err
        assert proc.returncode == 0 or (
            proc.returncode == 130 and err == "padata-mp: interrupted, cleaned up\n"
        )
