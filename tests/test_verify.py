"""verify() misses nothing: holes wherever they lie, every list head of every zone, and any single
bit flipped anywhere in the struct pages, the pageblock flags or the zones."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from padata_mp import Padata
from padata_mp.mm import Machine, VerifyError, deferred_init, layout
from padata_mp.mm import pages as pg

WORDS = {"flags": 0, "lru_next": 1, "lru_prev": 2, "counts": 6}


@pytest.fixture(scope="module")
def engine():
    with Padata(2) as e:
        yield e


def initialised(engine, mem, nodes=1, holes=None):
    machine = Machine.create(mem, nodes, holes=holes)
    engine.attach(*machine.shared_arrays)
    deferred_init(machine, engine)
    machine.verify()
    return machine


def flipped(machine, array, index, bit):
    """verify() after flipping ``bit`` of ``array[index]`` (an unsigned view); the bit flipped back."""
    view = array.view(np.dtype(f"u{array.dtype.itemsize}"))
    mask = view.dtype.type(1) << view.dtype.type(bit)
    view[index] ^= mask
    try:
        with pytest.raises(VerifyError) as info:
            machine.verify()
        return info.value
    finally:
        view[index] ^= mask


@pytest.mark.parametrize("where", ["straddles", "starts at", "ends at", "before", "inside"])
def test_every_pfn_of_a_hole_is_proven_whichever_side_of_the_first_deferred_pfn(engine, where):
    fd = layout((4 << 30) // pg.PAGE_SIZE, 1)[0].highest_zone.first_deferred_pfn
    lo, hi = {
        "straddles": (fd - 10, fd + 100),
        "starts at": (fd, fd + 100),
        "ends at": (fd - 100, fd),
        "before": (fd - 300, fd - 200),
        "inside": (fd + 1000, fd + 1100),
    }[where]
    with initialised(engine, "4G", holes=[(lo, hi)]) as machine:
        for pfn in sorted({lo, lo + 5, fd - 1 if lo < fd else lo, fd, fd + 5, hi - 1} & set(range(lo, hi))):
            for name, word in WORDS.items():
                err = flipped(machine, machine.raw[:, word], pfn, 3)
                assert err.pfn == pfn, (where, pfn, name, err)


def zones_with_pages(machine):
    return {(z.node, z.zone) for n in machine.nodes for z in n.zones}


def test_every_list_head_of_every_zone_is_proven(engine):
    """Node 0's DMA and node 1's DMA32 hold pages but none deferred; node 1 has no DMA at all."""
    with initialised(engine, "6G", nodes=2) as machine:
        have_pages = zones_with_pages(machine)
        deferred = {(z.node, z.zone) for z, _, _ in machine.deferred_ranges()}
        assert have_pages - deferred, "the layout has no zone with pages and nothing deferred"
        for node in range(len(machine.nodes)):
            for zone in range(pg.MAX_NR_ZONES):
                for field in ("free_next", "free_prev"):
                    for order in (0, 5, pg.MAX_ORDER):
                        heads = machine.zones[field][:, :, order]
                        err = flipped(machine, heads, (node, zone), 4)
                        assert "order" in str(err), (node, zone, field, order, err)
                err = flipped(machine, machine.zones["nr_free"][:, :, 3], (node, zone), 0)
                assert "nr_free" in str(err)
                err = flipped(machine, machine.zones["managed_pages"], (node, zone), 1)
                assert "managed_pages" in str(err) or "free" in str(err)


@pytest.fixture(scope="module")
def small_machine(engine):
    """Two nodes, a hole across a first deferred pfn and one inside the deferred range."""
    fd = layout((2 << 30) // pg.PAGE_SIZE, 2)[1].highest_zone.first_deferred_pfn
    machine = initialised(engine, "2G", nodes=2, holes=[(fd - 7, fd + 9), (fd + 40_000, fd + 41_000)])
    yield machine
    machine.close()


REGIONS = ("struct page", "pageblock", "zone")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(region=st.sampled_from(REGIONS), where=st.integers(0, 2**62), bit=st.integers(0, 63))
def test_any_single_bit_flip_is_caught(small_machine, region, where, bit):
    """Every word verify() reads has exactly one valid value per page (or, for list links and
    counters, one per state of the lists), so no single flipped bit leaves a valid state: this test
    allows no pass.  (Corruptions that do leave a valid state exist - swapping the order of two
    heads in one list, say - but take more than one bit.)"""
    m = small_machine
    if region == "struct page":
        flipped(m, m.raw, (where % m.total_pages, where // m.total_pages % 8), bit)
    elif region == "pageblock":
        flipped(m, m.pageblocks, where % len(m.pageblocks), bit % 8)
    else:
        fields = [("free_next", o) for o in range(pg.NR_ORDERS)] + [
            ("free_prev", o) for o in range(pg.NR_ORDERS)
        ]
        fields += [("nr_free", o) for o in range(pg.NR_ORDERS)] + [("managed_pages", None)]
        name, order = fields[where % len(fields)]
        entries = m.zones[name] if order is None else m.zones[name][:, :, order]
        node, zone = divmod(where // len(fields) % entries.size, pg.MAX_NR_ZONES)
        flipped(m, entries, (node, zone), bit)
