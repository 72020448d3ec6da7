"""A submitted job's Future keeps concurrent.futures' contract, and a Ctrl-C in any wait on it
stops the job before it propagates."""

import concurrent.futures
import os
import random
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from padata_mp import JobCancelledError, MtJob, Padata, SharedArray
from tests import fns
from tests.adversary import covered

SIZE = 1 << 12


@pytest.fixture(scope="module")
def engine():
    with Padata(2) as engine:
        yield engine


def test_cancel_is_true_exactly_when_the_future_ends_cancelled(engine):
    rng = random.Random(7)
    outcomes = {"cancelled": 0, "finished": 0}
    with SharedArray.create(SIZE, np.int64) as counts:
        for _ in range(100):
            counts.array[:] = 0
            calls = []
            future = engine.submit(MtJob(fns.count_slowly, (counts, 0.002), 0, SIZE, align=64, max_threads=3))
            future.add_done_callback(calls.append)
            time.sleep(rng.choice([0.0, 0.0, rng.uniform(0.0, 0.15)]))  # queued, running, or over
            cancelled = future.cancel()
            assert cancelled == future.cancelled() and future.done()
            assert calls == [future]  # each done callback, once, by the time cancel() returned
            assert future in concurrent.futures.wait([future], timeout=0).done
            if cancelled:
                outcomes["cancelled"] += 1
                for get in (future.result, future.exception):
                    with pytest.raises(concurrent.futures.CancelledError) as info:
                        get(timeout=0)
                    assert isinstance(info.value, JobCancelledError)
                not_done = covered(info.value.not_done, SIZE)
                after = counts.array.copy()
                assert (after[~not_done] == 1).all() and (after[not_done] == 0).all()
                time.sleep(0.01)
                assert (counts.array == after).all(), "the job wrote after cancel() returned True"
            else:
                outcomes["finished"] += 1
                assert future.result(timeout=0).nworks >= 1 and future.exception(timeout=0) is None
                assert (counts.array == 1).all()
                assert future.cancel() is False  # and stays so
    assert outcomes["cancelled"] and outcomes["finished"], outcomes


def test_a_finished_job_is_not_cancelled(engine):
    future = engine.submit(MtJob(fns.nothing, None, 0, 8))
    future.result(timeout=30)
    assert future.cancel() is False and not future.cancelled()
    assert concurrent.futures.wait([future], timeout=0).done == {future}


STORM = textwrap.dedent(
    """
    import os, random, signal, sys, threading, time
    import numpy as np
    from padata_mp import MtJob, Padata, SharedArray
    from tests import fns

    WAYS = {
        "result": lambda future: future.result(),
        "watch": lambda future: [p for p in future.watch(interval=0.001)],
        "do_multithreaded": None,
    }

    if __name__ == "__main__":
        way, rounds = sys.argv[1], int(sys.argv[2])
        rng = random.Random(way)
        late = 0
        with Padata(2) as engine, SharedArray.create(1 << 12, np.int64) as counts:
            job = MtJob(fns.count_slowly, (counts, 0.001), 0, 1 << 12, align=16, max_threads=3)
            for _ in range(rounds):
                delay = rng.uniform(0.0, 0.03)
                timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
                try:
                    timer.start()
                    if way == "do_multithreaded":
                        engine.do_multithreaded(job)
                    else:
                        WAYS[way](engine.submit(job))
                    timer.join()  # it came after the job: nothing to stop, it lands in the sleep
                    time.sleep(1)
                except KeyboardInterrupt:
                    after = counts.array.copy()
                    time.sleep(0.005)
                    late += not (counts.array == after).all()
                timer.join()
        print(late, flush=True)
    """
)


@pytest.mark.parametrize("way", ["result", "watch", "do_multithreaded"])
def test_ctrl_c_at_random_moments_of_a_wait_leaves_nothing_writing(tmp_path, way):
    script = tmp_path / "storm.py"
    script.write_text(STORM)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run(
        [sys.executable, str(script), way, "60"], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0"], "jobs wrote after the KeyboardInterrupt"
