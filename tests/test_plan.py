"""The kernel's chunking rules (kernel.md section 2), checked against its own arithmetic."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from padata_mp import MtJob, plan
from padata_mp.job import claim_sequence
from tests import fns

sizes = st.integers(min_value=0, max_value=10**7)
small = st.integers(min_value=1, max_value=5000)


def job(**kw) -> MtJob:
    return MtJob(fns.nothing, **{"size": 10, **kw})


@given(
    start=st.integers(0, 10**9),
    size=sizes,
    align=small,
    min_chunk=st.integers(0, 5000),
    max_threads=st.integers(1, 64),
    workers=st.none() | st.integers(1, 64),
)
def test_plan_follows_the_kernel(start, size, align, min_chunk, max_threads, workers):
    j = job(start=start, size=size, align=align, min_chunk=min_chunk, max_threads=max_threads)
    p = plan(j, workers)
    if size == 0:
        assert p.nworks == 0
        return
    nworks = min(max(size // max(min_chunk, align), 1), max_threads)
    if workers is not None:
        nworks = min(nworks, workers)
    assert p.nworks == nworks <= max_threads
    if nworks == 1:
        assert p.chunk_size == size  # one whole-range call
        return
    expected = max(size // (nworks * 4), min_chunk, 1)
    expected = -(-expected // align) * align
    assert p.chunk_size == expected
    assert p.chunk_size % align == 0


@given(
    start=st.integers(0, 10**6),
    size=st.integers(1, 10**6),
    align=small,
    min_chunk=st.integers(0, 5000),
    max_threads=st.integers(2, 16),
)
def test_claims_cover_the_range_once_with_aligned_ends(start, size, align, min_chunk, max_threads):
    j = job(start=start, size=size, align=align, min_chunk=min_chunk, max_threads=max_threads)
    p = plan(j)
    chunks = claim_sequence(j, p.chunk_size)
    assert chunks[0][0] == start and chunks[-1][1] == start + size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    # Every chunk but the job's last ends on an absolute multiple of chunk_size, hence of align.
    assert all(end % p.chunk_size == 0 for _, end in chunks[:-1])
    # Only the first chunk may be short.
    assert all(end - s == p.chunk_size for s, end in chunks[1:-1])


def test_kernel_edge_cases():
    assert plan(job(size=0, max_threads=8)).nworks == 0
    # size below min_chunk: one thread, whole range
    assert plan(job(size=100, min_chunk=1000, max_threads=8)).nworks == 1
    # min_chunk 0 is the 2024 divide-by-zero case: treated as 1
    p = plan(job(size=3, min_chunk=0, max_threads=8))
    assert p.nworks == 3 and p.chunk_size == 1
    # align larger than size: one thread
    assert plan(job(size=100, align=4096, max_threads=8)).nworks == 1
    # align not dividing min_chunk: chunks still aligned
    p = plan(job(size=10**6, align=96, min_chunk=1000, max_threads=8))
    assert p.chunk_size % 96 == 0 and p.chunk_size >= 1000
    # max_threads above the CPU count is only an upper bound
    assert plan(job(size=10**6, max_threads=10**4), workers=2).nworks == 2
    # the 2023 rule: a large align does not ask for more threads than size // align
    assert plan(job(size=4 * 32768, align=32768, min_chunk=1, max_threads=64)).nworks == 4


def test_deferred_init_parameters():
    """A node of 8 sections and 4 CPUs, as deferred init asks: section-sized, section-aligned chunks."""
    section = 32768
    p = plan(job(start=3 * section, size=8 * section, align=section, min_chunk=section, max_threads=4))
    assert p == plan(job(start=0, size=8 * section, align=section, min_chunk=section, max_threads=4))
    assert p.nworks == 4 and p.chunk_size == section


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"align": 0}, "align must be >= 1"),
        ({"size": -1}, "size must be >= 0"),
        ({"start": -5}, "start must be >= 0"),
        ({"max_threads": 0}, "max_threads must be >= 1"),
        ({"min_chunk": -1}, "min_chunk must be >= 0"),
        ({"start": 2**63 - 1, "size": 1}, "at most 2\\*\\*63 - 1"),
    ],
)
def test_bad_values_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        job(**kw)


def test_bad_types_are_refused():
    with pytest.raises(TypeError, match="callable"):
        MtJob(42)
    with pytest.raises(TypeError, match="needs size="):
        MtJob(fns.nothing, None)
    with pytest.raises(TypeError, match="size must be an int"):
        job(size=1.5)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        plan(job(size=10), workers=0)


def test_max_threads_left_unset_is_bounded_only_by_the_workers():
    j = job(size=1000)
    assert j.max_threads is None
    assert plan(j, workers=3).nworks == 3
