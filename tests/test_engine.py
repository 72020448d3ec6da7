"""Real runs on a pool of worker processes: coverage, the kernel's claim rules, errors and leaks."""

import os
import pickle
import signal
import threading

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from padata_mp import (
    CALLER,
    JobFailedError,
    MtJob,
    Padata,
    PadataError,
    SharedArray,
    WorkerDiedError,
    do_multithreaded,
    plan,
    read_topology,
)
from padata_mp.job import claim_sequence
from tests import fns
from tests.conftest import SHM, until, until_a_helper_dies

N = 1 << 20


def check_report(report, job):
    """The report's chunks are exactly the kernel's claim sequence for the nworks it got."""
    p = plan(job, report.nworks)
    assert report.chunk_size == p.chunk_size
    got = sorted((s, e) for s, e, _ in report.chunks)
    expected = (
        [(job.start, job.end)] if report.nworks == 1 and len(got) == 1 else claim_sequence(job, p.chunk_size)
    )
    assert got == expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(0, N // 2),
    size=st.integers(0, N // 2),
    align=st.integers(1, 5000),
    min_chunk=st.integers(0, 20000),
    max_threads=st.integers(1, 8),
)
def test_every_index_exactly_once(engine, counts, start, size, align, min_chunk, max_threads):
    counts.array[:] = 0
    job = MtJob(fns.count, counts, start, size, align, min_chunk, max_threads)
    report = engine.do_multithreaded(job)
    a = counts.array
    assert (a[start : start + size] == 1).all()
    assert a[:start].sum() == 0 and a[start + size :].sum() == 0
    assert report.nworks <= max_threads
    if size == 0:
        assert report.nworks == 0 and report.chunks == []
        return
    check_report(report, job)


def test_one_work_is_one_call_in_the_caller(engine, counts):
    job = MtJob(fns.record_pid, counts, 10, 1000, min_chunk=5000, max_threads=8)
    report = engine.do_multithreaded(job)
    assert report.nworks == 1
    assert report.chunks == [(10, 1010, CALLER)]
    assert (counts.array[10:1010] == os.getpid()).all()


def test_helpers_and_caller_share_the_work(engine, counts):
    job = MtJob(fns.count_slowly, (counts, 0.01), 0, N, align=4096, min_chunk=4096, max_threads=2)
    report = engine.do_multithreaded(job)
    assert report.nworks == 2
    workers = {wid for _, _, wid in report.chunks}
    assert workers == {CALLER, 0} or workers == {CALLER, 1}
    assert set(report.busy_s) == workers
    assert (counts.array == 1).all()


def test_default_engine_caps_processes_at_the_cpu_count():
    topology = read_topology()  # the CPUs this process may use, capped by a cgroup quota
    with Padata() as e, SharedArray.create(N, np.int64) as block:
        report = e.do_multithreaded(MtJob(fns.count, block, 0, N, max_threads=64))
        assert report.nworks <= topology.cpu_limit
        assert len(e.workers) == topology.default_workers()


def test_max_threads_left_unset_is_the_cpus_the_engine_has():
    topology = read_topology()
    with Padata(4) as e, SharedArray.create(N, np.int64) as block:
        until(lambda: len(e.workers) == 4)
        assert e.do_multithreaded(MtJob(fns.count, block, 0, N)).nworks == min(topology.cpu_limit, 5)
        assert e.do_multithreaded(MtJob(fns.count, block, 0, N, max_threads=1)).nworks == 1
        assert (block.array == 2).all()


def test_module_level_do_multithreaded(counts):
    report = do_multithreaded(MtJob(fns.count, counts, 0, N, align=512, max_threads=2))
    assert (counts.array == 1).all()
    check_report(report, MtJob(fns.count, counts, 0, N, align=512, max_threads=2))


def test_submit_runs_jobs_at_once(engine, counts):
    jobs = [MtJob(fns.count, counts, k * (N // 4), N // 4, align=64, max_threads=2) for k in range(4)]
    futures = [engine.submit(j) for j in jobs]
    for f, j in zip(futures, jobs, strict=True):
        check_report(f.result(timeout=60), j)
    assert (counts.array == 1).all()


def test_thread_fn_raising_names_the_chunk_and_what_is_not_done(engine, counts):
    bad = 700_000
    job = MtJob(fns.raise_at, (counts, bad), 0, N, align=4096, min_chunk=4096, max_threads=2)
    with pytest.raises(JobFailedError) as info:
        engine.do_multithreaded(job)
    err = info.value
    assert isinstance(err.__cause__, ValueError) and "bad index 700000" in str(err.__cause__)
    assert "raise_at" in str(err)  # the remote traceback
    assert err.chunk[0] <= bad < err.chunk[1]
    done = counts.array == 1
    # Everything outside not_done was done exactly once; nothing was done twice.
    outside = np.ones(N, bool)
    for s, e in err.not_done:
        outside[s:e] = False
    assert done[outside].all()
    assert counts.array.max() == 1
    assert not done[bad]
    # The engine still works.
    counts.array[:] = 0
    engine.do_multithreaded(MtJob(fns.count, counts, 0, N, align=4096, max_threads=2))
    assert (counts.array == 1).all()


def test_thread_fn_returning_a_non_int_is_an_error(engine):
    with pytest.raises(JobFailedError, match="must return None or an int error code"):
        engine.do_multithreaded(MtJob(fns.returns_value, None, 0, 100, max_threads=2))
    with pytest.raises(JobFailedError, match="must return None or an int error code"):
        engine.do_multithreaded(MtJob(fns.returns_value, None, 0, 100, min_chunk=100))


def test_a_killed_worker_is_reported_and_replaced(no_leaks, counts):
    with Padata(2) as e:
        job = MtJob(fns.kill_self_at, (counts, N // 2, os.getpid()), 0, N, align=1024, max_threads=2)
        pids = {pid for _, pid, _ in e.workers}
        err = until_a_helper_dies(e, counts, job)
        assert err.pid in pids
        assert err.exitcode == -signal.SIGKILL
        assert err.chunk is not None and err.chunk[0] <= N // 2 < err.chunk[1]
        assert "signal 9" in str(err)
        outside = np.ones(N, bool)
        for s, end in err.not_done:
            outside[s:end] = False
        assert (counts.array[outside] == 1).all()
        # Replaced: a new pid, same count, and the next job succeeds.
        until(lambda: len(e.workers) == 2 and {pid for _, pid, _ in e.workers} != pids)
        counts.array[:] = 0
        e.do_multithreaded(MtJob(fns.count, counts, 0, N, align=1024, max_threads=3))
        assert (counts.array == 1).all()


def test_a_worker_killed_while_idle_is_replaced(engine, counts):
    victim = psutil.Process(engine.workers[0][1])
    victim.kill()
    victim.wait(5)
    engine.do_multithreaded(MtJob(fns.count, counts, 0, N, align=1024, max_threads=3))
    assert (counts.array == 1).all()


def test_bad_input_is_refused_before_work(engine):
    with pytest.raises(TypeError, match="fn_arg cannot be sent"):
        engine.do_multithreaded(MtJob(fns.nothing, threading.Lock(), 0, 10))
    with pytest.raises(TypeError, match="MtJob"):
        engine.do_multithreaded((fns.nothing, None, 0, 10))
    with pytest.raises(ValueError, match="node"):
        engine.do_multithreaded(MtJob(fns.nothing, None, 0, 10), node=7)
    with pytest.raises(ValueError, match="workers"):
        Padata(0)
    with pytest.raises(ValueError, match="start_method"):
        Padata(1, start_method="vfork")


def test_close_leaves_nothing_and_refuses_new_jobs(no_leaks):
    e = Padata(2)
    pids = [pid for _, pid, _ in e.workers]
    e.close()
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    with pytest.raises(PadataError, match="closed"):
        e.do_multithreaded(MtJob(fns.nothing, None, 0, 10, max_threads=2))
    e.close()  # idempotent


def test_errors_leave_nothing_behind(no_leaks):
    with Padata(2) as e, SharedArray.create(N, np.int64) as block, pytest.raises(JobFailedError):
        e.do_multithreaded(MtJob(fns.raise_at, (block, 5), 0, N, align=1024, max_threads=2))
    with pytest.raises(RuntimeError), Padata(2), SharedArray.create(N, np.int64):
        raise RuntimeError("user code failed")


def test_shared_array_pickles_as_a_handle_and_unlinks_once(no_leaks):
    with SharedArray.create((4, 5), np.int32) as block:
        block.array[:] = 7
        copy = pickle.loads(pickle.dumps(block))
        assert copy.name == block.name and copy.shape == (4, 5) and copy.dtype == np.int32
        assert (copy.array == 7).all()
        with pytest.raises(PermissionError):
            copy.unlink()
    assert block.name not in os.listdir(SHM)


def test_workers_unmap_unlinked_blocks(engine):
    block = SharedArray.create(N, np.int64)
    engine.attach(block)
    for _, pid, _ in engine.workers:
        assert any(block.name in m.path for m in psutil.Process(pid).memory_maps())
    block.unlink()
    for _, pid, _ in engine.workers:
        assert not any(block.name in m.path for m in psutil.Process(pid).memory_maps())


def test_retry_reruns_what_a_dead_helper_left(counts):
    with Padata(2) as e, SharedArray.create(1, np.int64) as flag:
        report = None
        for _ in range(5):  # until a helper, not the caller, takes the poisoned chunk
            counts.array[:] = 0
            job = MtJob(
                fns.kill_once_at,
                (counts, N // 2, os.getpid(), flag),
                0,
                N,
                align=1024,
                max_threads=2,
                retry=True,
            )
            report = e.do_multithreaded(job)
            if flag.array[0]:
                break
        assert flag.array[0] == 1, "no helper ever claimed the chunk"
        assert report.retried and any(s <= N // 2 < end for s, end in report.retried)
        # Re-running made up for the dead helper: every index counted, none twice.
        assert (counts.array == 1).all()


def test_retry_gives_up_after_max_retries():
    with Padata(2) as e:
        job = MtJob(fns.helpers_die, os.getpid(), 0, 64, max_threads=2, retry=True)
        with pytest.raises(WorkerDiedError) as info:
            e.do_multithreaded(job)
        assert info.value.not_done
        until(lambda: len(e.workers) == 2)  # replaced, and usable
        e.do_multithreaded(MtJob(fns.nothing, None, 0, 64, max_threads=2))


def test_oversubscribed_pool_is_correct(counts):
    with Padata(8) as e:
        for _ in range(3):
            counts.array[:] = 0
            report = e.do_multithreaded(MtJob(fns.count, counts, 0, N, align=64, max_threads=8))
            assert report.nworks == 8
            assert (counts.array == 1).all()


def test_many_jobs_from_many_threads(engine):
    import concurrent.futures

    with SharedArray.create(N, np.int64) as block:

        def one(k):
            job = MtJob(fns.count, block, k * (N // 64), N // 64, align=16, max_threads=2)
            return engine.do_multithreaded(job) if k % 2 else engine.submit(job).result()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(64)))
        assert (block.array == 1).all()


def test_attach_skips_a_dead_worker_and_reports_the_rest(counts):
    with Padata(2) as e:
        victim = psutil.Process(e.workers[0][1])  # before the kill: once reaped, no pid to look up
        victim.kill()
        victim.wait(5)
        seconds = e.attach(counts)
        assert list(seconds) == [1] and seconds[1] >= 0
        e.do_multithreaded(MtJob(fns.count, counts, 0, N, align=1024, max_threads=3))
        assert (counts.array == 1).all()


def test_submit_makes_a_worker_the_caller_or_falls_back_to_a_thread(counts):
    with Padata(1) as e:
        # Each job wants one process and takes 0.2 s: one gets the only worker as its caller, the
        # other, finding none free, runs in its own thread of this process.
        jobs = [MtJob(fns.count_slowly, (counts, 0.2), k * 1000, 1000, min_chunk=1000) for k in range(2)]
        reports = [f.result(timeout=30) for f in [e.submit(j) for j in jobs]]
        runners = sorted({wid for r in reports for _, _, wid in r.chunks})
        assert runners == [CALLER, 0]
        assert all(r.nworks == 1 and len(r.chunks) == 1 for r in reports)
        assert (counts.array[:2000] == 1).all()


def test_close_during_a_job_is_an_error_not_a_silent_loss(counts):
    import threading

    e = Padata(2)
    # 8 chunks of 0.3 s on 2 processes: about 1.2 s of work, closed after 0.2 s.
    job = MtJob(fns.count_slowly, (counts, 0.3), 0, N, align=1024, max_threads=2)
    future = e.submit(job)
    threading.Timer(0.2, e.close).start()
    with pytest.raises(PadataError, match="not done"):
        future.result(timeout=30)
    assert not (counts.array == 1).all()  # stopped early, and said so
