"""The library where Python people work: functions from a notebook or ``python -c`` (a main module
with no file), lambdas, closures and nested functions run on the engine; what cannot travel is
refused by name; a submitted job says how far it has got."""

import io
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from padata_mp import BadTypeError, MtJob, SharedArray
from tests import fns
from tests.conftest import until

N = 1 << 20

NOTEBOOK = textwrap.dedent(
    """
    import numpy as np
    from padata_mp import MtJob, Padata, SharedArray

    def count(start, end, block):           # defined at the prompt: workers cannot import it
        block.array[start:end] += 1

    with Padata(2) as engine, SharedArray.create(1 << 20, np.int64) as block:
        engine.do_multithreaded(MtJob(count, block, 0, 1 << 20, align=4096, max_threads=2))
        engine.submit(MtJob(count, block, 0, 1 << 20, align=4096, max_threads=2)).result()
        print(int(block.array.min()), int(block.array.max()))
    """
)


@pytest.mark.parametrize("how", ["python -c", "exec"])
def test_a_function_defined_in_a_main_module_without_a_file_runs(how):
    code = NOTEBOOK if how == "python -c" else f"exec(compile({NOTEBOOK!r}, '<cell>', 'exec'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2"]  # every index once per job, in workers and caller


def test_a_lambda_covers_its_range_exactly_once(engine, counts):
    engine.do_multithreaded(
        MtJob(
            lambda s, e, b: b.array.__setitem__(slice(s, e), b.array[s:e] + 1),
            counts,
            0,
            N,
            align=4096,
            max_threads=2,
        )
    )
    assert (counts.array == 1).all()


def test_a_closure_over_a_shared_array_covers_its_range_exactly_once(engine):
    with SharedArray.create(N, np.int64) as block:
        step = 3

        def add(start, end, _):  # closes over block and step
            block.array[start:end] += step

        engine.do_multithreaded(MtJob(add, None, 0, N, align=4096, max_threads=2))
        assert (block.array == 3).all()


def test_a_nested_function_covers_its_range_exactly_once(engine, counts):
    def make():
        def inner(start, end, b):
            b.array[start:end] += 1

        return inner

    engine.submit(MtJob(make(), counts, 0, N, align=4096, max_threads=2)).result(timeout=60)
    assert (counts.array == 1).all()


@pytest.mark.parametrize(
    ("fn_arg", "named"),
    [
        (threading.Lock(), "lock"),
        ((x for x in range(3)), "generator"),
    ],
)
def test_what_cannot_travel_is_refused_by_name_before_any_work(engine, counts, fn_arg, named):
    with pytest.raises(BadTypeError, match=f"fn_arg cannot be sent.*{named}"):
        engine.do_multithreaded(MtJob(fns.count, (counts, fn_arg), 0, N, max_threads=2))
    assert not counts.array.any()


@pytest.mark.parametrize("mode", ["r", "w"])
def test_an_open_file_is_refused_by_name(engine, tmp_path, mode):
    (tmp_path / "f").write_text("data")
    with (
        open(tmp_path / "f", mode) as f,
        pytest.raises(BadTypeError, match=r"fn_arg cannot be sent.*open file.*TextIOWrapper"),
    ):
        engine.do_multithreaded(MtJob(fns.nothing, f, 0, 10, max_threads=2))


def test_progress_of_a_submitted_job_rises_to_the_whole_range(engine, counts):
    job = MtJob(fns.count_slowly, (counts, 0.02), 0, N, align=4096, min_chunk=4096, max_threads=2)
    future = engine.submit(job)
    seen = []
    while not future.done():
        seen.append(future.progress())
        time.sleep(0.005)
    future.result()
    seen.append(future.progress())
    done = [p.done for p in seen]
    claimed = [p.claimed for p in seen]
    assert done == sorted(done) and claimed == sorted(claimed)  # never falls back
    assert all(p.done <= p.claimed <= p.size == N for p in seen)
    assert seen[-1].done == N and seen[-1].fraction == 1.0
    assert any(0 < d < N for d in done)  # seen while it ran, not only at the ends


def test_watch_sleeps_between_reports_and_ends_with_the_final_one(engine, counts):
    job = MtJob(fns.count_slowly, (counts, 0.02), 0, N, align=4096, min_chunk=4096, max_threads=2)
    future = engine.submit(job)
    began = time.monotonic()
    seen = list(future.watch(interval=0.05))
    elapsed = time.monotonic() - began
    assert future.done() and seen[-1].done == N
    assert len(seen) <= elapsed / 0.05 + 2  # one report an interval, not a busy loop
    assert [p.done for p in seen] == sorted(p.done for p in seen)


def test_on_progress_calls_back_until_the_end_and_a_raising_callback_is_logged(engine, counts, caplog):
    job = MtJob(fns.count_slowly, (counts, 0.02), 0, N, align=4096, min_chunk=4096, max_threads=2)
    future = engine.submit(job)
    seen, calls_of_bad = [], []

    def bad(progress):
        calls_of_bad.append(progress)
        raise RuntimeError("a bug in the callback")

    future.on_progress(seen.append, interval=0.02)
    future.on_progress(bad, interval=0.02)
    future.result()
    until(lambda: seen and seen[-1].done == N)
    until(lambda: "a bug in the callback" in caplog.text)
    assert len(calls_of_bad) == 1  # not called again after raising
    assert (counts.array == 1).all()


def test_progress_bar_is_returned_and_closed_before_the_result(engine, counts):
    pytest.importorskip("tqdm")
    out = io.StringIO()
    future = engine.submit(MtJob(fns.count_slowly, (counts, 0.01), 0, N, align=4096, max_threads=2))
    with future.progress_bar(file=out, interval=0.02, ascii=True) as bar:
        future.result()
        # Closed, at 100%, before result() returned: what the caller prints next comes after it.
        assert bar.n == N
        assert "100%" in out.getvalue()
        out.write("the result line\n")
    assert out.getvalue().rstrip().endswith("the result line")


def test_progress_bar_without_tqdm_says_how_to_get_it(engine, counts, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    future = engine.submit(MtJob(fns.count, counts, 0, N))
    with pytest.raises(ImportError, match="pip install tqdm"):
        future.progress_bar()
    future.result()


def test_progress_intervals_must_be_positive(engine, counts):
    future = engine.submit(MtJob(fns.count, counts, 0, N))
    with pytest.raises(ValueError, match="interval must be a number of seconds > 0"):
        future.on_progress(print, interval=0)
    with pytest.raises(ValueError, match="interval"):
        next(future.watch(interval=-1))
    future.result()
