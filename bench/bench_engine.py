"""pytest-benchmark: the engine's overhead.  `make bench-pytest` times them; `make test` runs them
once, untimed, as correctness checks."""

import numpy as np
import pytest
from noop import nothing  # this folder is on sys.path (pytest puts it there)

from padata_mp import MtJob, Padata, SharedArray
from padata_mp.job import claim_sequence, plan


@pytest.fixture(scope="module")
def engine():
    with Padata(2) as e:
        yield e


def test_round_trip_small_job(benchmark, engine):
    job = MtJob(nothing, None, 0, 100, max_threads=2)
    report = benchmark(engine.do_multithreaded, job)
    assert report.nworks == 2 and len(report.chunks) == len(claim_sequence(job, plan(job, 2).chunk_size))


def test_empty_chunks(benchmark):
    with Padata(2, load_balance_factor=10_000) as e:
        job = MtJob(nothing, None, 0, 20_000, max_threads=2)
        report = benchmark(e.do_multithreaded, job)
    assert sorted((s, end) for s, end, _ in report.chunks) == claim_sequence(
        job, plan(job, 2, load_balance_factor=10_000).chunk_size
    )


def test_fill_one_gib(benchmark, engine):
    with SharedArray.create(1 << 27, np.uint64) as block:
        engine.attach(block)
        job = MtJob(fill, block, 0, 1 << 27, align=1 << 15, min_chunk=1 << 15, max_threads=2)
        benchmark(engine.do_multithreaded, job)
        assert (block.array[:: 1 << 20] == 7).all()


def fill(start, end, block):
    block.array[start:end] = 7
