"""pytest-benchmark: the deferred-init chunk kernel alone, and whole runs on 1 and 2 processes."""

import pytest

from padata_mp import Padata
from padata_mp.mm import Machine, deferred_init, init_chunk
from padata_mp.mm.deferred import zone_job


@pytest.fixture(scope="module")
def machine():
    with Machine.create("16G", 1) as m:
        yield m


def test_init_chunk_one_process(benchmark, machine):
    zone = machine.nodes[0].highest_zone
    job = zone_job(machine, zone)
    benchmark(init_chunk, zone.first_deferred_pfn, zone.end_pfn, job)


@pytest.mark.parametrize("threads", [1, 2])
def test_deferred_init(benchmark, machine, threads):
    with Padata(2) as engine:
        engine.attach(*machine.shared_arrays)

        result = benchmark.pedantic(deferred_init, (machine, engine, threads), setup=machine.reset, rounds=5)
        assert machine.verify().free_pages == result.pages
