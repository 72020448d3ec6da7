"""pytest-benchmark: the kernels of the series' next jobs, one process, on a 16 GiB machine after
deferred init: compound-page preparation, buddy merging, munmap, VFIO pinning."""

import numpy as np
import pytest

from padata_mp import Padata
from padata_mp.mm import Machine, deferred_init
from padata_mp.mm import pages as pg
from padata_mp.mm.mapping import Mapping, VfioPin, mmap_populate, munmap_chunk, pin_chunk, unpin_chunk

HUGE = 1 << 20  # pages of huge pages prepared per round


@pytest.fixture(scope="module")
def booted():
    with Padata(2) as engine, Machine.create("16G", 1) as machine:
        engine.attach(*machine.shared_arrays)
        deferred_init(machine, engine)
        with Mapping(machine, 1 << 21) as mapping:
            engine.attach(*mapping.shared_arrays)
            mmap_populate(mapping, engine)
            yield machine, mapping


@pytest.mark.parametrize("order", [9, 18])
def test_prep_compound(benchmark, order):
    raw = np.zeros((HUGE, 8), np.uint64)
    heads = np.arange(0, HUGE, 1 << order)
    benchmark(pg.prep_compound, raw, heads, order, pg.page_flags(0, pg.ZONE_NORMAL))
    assert (raw[heads, 0] & pg.PG_HEAD).all()
    assert raw[HUGE - 1, 1] == pg.page_address((HUGE - 1) >> order << order) + 1


def test_merge_buddies_of_a_scattered_block(benchmark):
    pages = np.arange(0, 1 << 16)[np.arange(1 << 16) % 3 != 0]  # two pages of every three
    merged = benchmark(pg.merge_buddies, {0: pages})
    assert sum(len(b) << order for order, b in merged.items()) == len(pages)


def test_munmap_chunk(benchmark, booted):
    machine, mapping = booted
    state, pfns = machine.save_state(), mapping.pfns.copy()

    def remap():
        machine.restore_state(state)
        mapping.pfns[:] = pfns

    benchmark.pedantic(munmap_chunk, (0, mapping.pages, mapping.job_arg), setup=remap, rounds=5)
    assert (mapping.pfns < 0).all()
    remap()


def test_pin_and_unpin_chunk(benchmark, booted):
    _, mapping = booted
    with VfioPin(mapping, 0, mapping.pages) as pin:
        arg = pin.job(1).fn_arg

        def pin_and_unpin():
            assert pin_chunk(0, mapping.pages, arg) == 0
            unpin_chunk(0, mapping.pages, arg)

        benchmark(pin_and_unpin)
        assert (pin.iova_pfns == -1).all()
        mapping.verify()
