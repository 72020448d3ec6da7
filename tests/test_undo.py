"""The 2022 RFC's error return and undo_fn: a failing chunk makes the engine undo every completed
chunk and report the first error."""

import os

import numpy as np
import pytest

from padata_mp import JobFailedError, MtJob, Padata, PadataError
from padata_mp.ranges import subtract_ranges
from tests import fns
from tests.conftest import until_a_helper_dies

N = 1 << 20


def covered(ranges, n=N):
    mask = np.zeros(n, bool)
    for s, e in ranges:
        mask[s:e] = True
    return mask


def test_an_error_return_is_reported_with_its_code(engine, counts):
    job = MtJob(fns.fail_with_code_at, (counts, 700_000), 0, N, align=4096, max_threads=3)
    with pytest.raises(JobFailedError) as info:
        engine.do_multithreaded(job)
    err = info.value
    assert err.error == -14 and "returned error -14" in str(err)
    assert err.chunk[0] <= 700_000 < err.chunk[1]
    assert err.__cause__ is None and err.undone == []
    # Without an undo_fn, what completed stays done, once.
    assert (counts.array[~covered(err.not_done)] == 1).all()
    assert counts.array.max() == 1


def test_undo_leaves_everything_as_before(engine, counts):
    job = MtJob(
        fns.fail_with_code_at, (counts, 700_000), 0, N, align=4096, max_threads=3, undo_fn=fns.uncount
    )
    with pytest.raises(JobFailedError) as info:
        engine.do_multithreaded(job)
    err = info.value
    assert err.error == -14
    assert err.undone == subtract_ranges((0, N), err.not_done) and err.undone
    assert not (counts.array != 0).any()


def test_undo_after_a_raise(engine, counts):
    job = MtJob(fns.raise_at, (counts, 10), 0, N, align=4096, max_threads=3, undo_fn=fns.uncount)
    with pytest.raises(JobFailedError) as info:
        engine.do_multithreaded(job)
    assert isinstance(info.value.__cause__, ValueError) and info.value.error is None
    assert not (counts.array != 0).any()


def test_the_first_error_is_reported(engine, counts):
    chunk = N // 4
    # Chunk 0 is claimed first but fails a second later; chunk 1 fails at once.
    job = MtJob(fns.fail_late_or_early, (counts, chunk, 1.0), 0, N, align=chunk, max_threads=3)
    with pytest.raises(JobFailedError) as info:
        engine.do_multithreaded(job)
    assert info.value.error == -2 and info.value.chunk == (chunk, 2 * chunk)


def test_undo_after_a_helper_dies(counts):
    with Padata(2) as e:
        args = (counts, N // 2, os.getpid())
        job = MtJob(fns.kill_self_at, args, 0, N, align=1024, max_threads=2, undo_fn=fns.uncount)
        err = until_a_helper_dies(e, counts, job)
        assert err.undone == subtract_ranges((0, N), err.not_done)
        # The helper died before counting its chunk: nothing is left counted anywhere.
        assert not (counts.array != 0).any()


def test_a_failing_undo_is_an_error_of_its_own(engine, counts):
    job = MtJob(
        fns.fail_with_code_at, (counts, N - 1), 0, N, align=4096, max_threads=3, undo_fn=fns.undo_raises
    )
    with pytest.raises(PadataError, match="undo_fn failed") as info:
        engine.do_multithreaded(job)
    assert isinstance(info.value.__cause__, JobFailedError)


def test_a_single_call_failing_has_nothing_to_undo(engine, counts):
    job = MtJob(fns.fail_with_code_at, (counts, 5), 0, 100, min_chunk=100, undo_fn=fns.uncount)
    with pytest.raises(JobFailedError) as info:
        engine.do_multithreaded(job)
    assert info.value.error == -14 and info.value.undone == []
    assert not (counts.array != 0).any()


def test_bad_undo_fn_is_refused(engine):
    with pytest.raises(TypeError, match="undo_fn must be callable"):
        MtJob(fns.count, None, 0, 10, undo_fn=3)
    with pytest.raises(TypeError, match="undo_fn cannot be sent"):
        engine.do_multithreaded(
            MtJob(fns.count, None, 0, 10, undo_fn=(lambda gen: lambda s, e, a: gen)(x for x in ()))
        )


def test_subtract_ranges():
    assert subtract_ranges((0, 10), []) == [(0, 10)]
    assert subtract_ranges((0, 10), [(2, 4), (3, 5), (9, 12)]) == [(0, 2), (5, 9)]
    assert subtract_ranges((0, 10), [(0, 10)]) == []
