"""The kernel's other memory-proportional jobs on the simulated machine: each proven by its
verifier, each verifier shown to catch faults, and a failed VFIO pin undone exactly."""

import numpy as np
import pytest

from padata_mp import JobFailedError, PadataError
from padata_mp.mm import Machine, VerifyError, deferred_init
from padata_mp.mm import pages as pg
from padata_mp.mm.hugetlb import HugetlbFile, HugetlbPool, hugetlb_alloc, hugetlb_fallocate
from padata_mp.mm.mapping import (
    BLOCK,
    EFAULT,
    GUP_PIN_COUNTING_BIAS,
    Mapping,
    mmap_populate,
    munmap,
    vfio_pin,
)
from padata_mp.mm.pmem import DeviceMemory, memmap_init_zone_device

GIB_PAGES = (1 << 30) // pg.PAGE_SIZE


@pytest.fixture(scope="module")
def booted(engine):
    """A 2-node machine after deferred init, and its state to go back to."""
    with Machine.create("10G", 2) as machine:
        engine.attach(*machine.shared_arrays)
        deferred_init(machine, engine)
        yield machine, machine.save_state()


@pytest.fixture
def machine(booted):
    machine, state = booted
    machine.restore_state(state)
    return machine


def expect_fault(verify, fault):
    with pytest.raises(VerifyError) as info:
        fault()
        verify()
    return info.value


# -- pmem -------------------------------------------------------------------------------------


def test_pmem_init_and_its_verifier(engine, no_leaks):
    with DeviceMemory("1G", node=0) as device:
        with pytest.raises(VerifyError, match="not been initialised"):
            device.verify()
        run = memmap_init_zone_device(device, engine)
        assert run.reports[0].chunk_size % pg.PAGES_PER_SECTION == 0
        assert device.verify() == GIB_PAGES
        zones = (device.memmap[:, 0] >> np.uint64(pg.ZONES_PGSHIFT)) & np.uint64(7)
        assert int((zones == pg.ZONE_DEVICE).sum()) == GIB_PAGES  # every page, seen in the memmap itself
        flags = int(device.memmap[5, 0])
        assert (flags >> pg.ZONES_PGSHIFT) & 7 == pg.ZONE_DEVICE and flags & pg.PG_RESERVED
        device.memmap[777, 1] = 0  # page->pgmap lost
        err = expect_fault(device.verify, lambda: None)
        assert err.pfn == device.start_pfn + 777
        device.memmap[777, 1] = device.memmap[776, 1]
        device.verify()
        with pytest.raises(PadataError, match="already"):
            memmap_init_zone_device(device, engine)


def test_pmem_bad_input():
    with pytest.raises(ValueError, match="multiple of a section"):
        DeviceMemory("1G", start_pfn=12345)
    with pytest.raises(ValueError, match="size"):
        DeviceMemory("1Q")


# -- hugetlb ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "per_node"), [("2M", 401), ("2M", {1: 6}), ("1G", {1: 2})])
def test_hugetlb_pool_accounts_for_every_page(engine, machine, size, per_node):
    with HugetlbPool(machine, size, per_node) as pool:
        engine.attach(*pool.shared_arrays)
        hugetlb_alloc(pool, engine)
        asked = sum(per_node.values()) if isinstance(per_node, dict) else per_node * len(machine.nodes)
        assert pool.verify() == asked
        heads = machine.raw[:, 0] & np.uint64(pg.PG_HEAD) != 0  # compound heads, read off the memmap
        assert int(heads.sum()) == asked
        summary = machine.verify()
        assert summary.free_pages + pool.pages == summary.deferred_pages
        for node, heads in pool.heads.items():
            layout = machine.nodes[node]
            assert ((heads >= layout.start_pfn) & (heads < layout.end_pfn)).all()
        if per_node == 401:  # an odd count leaves a free order-9 half per node
            assert summary.per_order[9] == 2


def test_hugetlb_verifier_catches_faults(engine, machine):
    with HugetlbPool(machine, "2M", 10) as pool:
        engine.attach(*pool.shared_arrays)
        hugetlb_alloc(pool, engine)
        pool.verify()
        tail = int(pool.heads[1][3]) + 100
        saved = machine.raw[tail].copy()
        err = expect_fault(pool.verify, lambda: machine.raw.__setitem__((tail, 1), 0))
        assert err.pfn == tail
        machine.raw[tail] = saved
        pool.verify()
        # A huge page the pool forgot: its pages are neither free nor in the pool.
        kept = pool.heads[0]
        pool.heads[0] = kept[1:]
        expect_fault(pool.verify, lambda: None)
        pool.heads[0] = kept
        pool.verify()


def test_hugetlb_bad_input(machine):
    with pytest.raises(ValueError, match="room for"):
        HugetlbPool(machine, "1G", 100)
    with pytest.raises(ValueError, match="size must be"):
        HugetlbPool(machine, "4M", 1)
    with pytest.raises(ValueError, match="not a node"):
        HugetlbPool(machine, "2M", {5: 1})
    with pytest.raises(ValueError, match="at least one"):
        HugetlbPool(machine, "2M", 0)


def test_fallocate_clears_every_frame(engine, no_leaks):
    with HugetlbFile("256M") as file:
        engine.attach(*file.shared_arrays)
        hugetlb_fallocate(file, engine)
        assert file.verify() == 256 << 20
        assert not file.shared_arrays[0].array.any()  # every frame's every word cleared
        file.shared_arrays[0].array[77, 5] = 1
        err = expect_fault(file.verify, lambda: None)
        assert "huge page 77" in str(err)
    with pytest.raises(ValueError, match="2 MiB"):
        HugetlbFile("1M")


# -- mappings: munmap and VFIO ------------------------------------------------------------------


@pytest.fixture
def mapping(engine, machine):
    with Mapping(machine, 300_000, node=1) as mapping:
        engine.attach(*mapping.shared_arrays)
        mmap_populate(mapping, engine)
        yield mapping


def test_populate_maps_every_page(mapping):
    assert mapping.verify() == mapping.pages
    assert mapping.pages % BLOCK == 0 and (mapping.pfns >= 0).all()


def test_munmap_merges_freed_neighbours(engine, machine, mapping):
    before = machine.verify().per_order[pg.MAX_ORDER]
    munmap(mapping, 5000, 20_000, engine)  # partial blocks at both ends
    assert mapping.verify() == mapping.pages - 20_000
    munmap(mapping, 25_000, 3000, engine)  # joins the first range's last block
    munmap(mapping, 1000, 4000, engine)  # and its first
    mapping.verify()
    munmap(mapping, 0, mapping.pages, engine)  # everything: back to order-10 blocks only
    summary = machine.verify()
    assert mapping.verify() == 0
    assert summary.per_order[pg.MAX_ORDER] == before + mapping.pages // BLOCK
    assert all(summary.per_order[o] == 0 for o in range(1, pg.MAX_ORDER))


def test_munmap_verifier_catches_unmerged_buddies(engine, machine, mapping):
    munmap(mapping, 0, 2 * BLOCK, engine)
    mapping.verify()
    zone = mapping.zone
    head = int(mapping.job_arg.blocks.array[0])

    def split():  # the freed block listed as two order-9 halves: correct lists, missed merge
        machine.free_lists.relink(zone, pg.MAX_ORDER, machine.free_lists.free_heads(zone, pg.MAX_ORDER)[1:])
        machine.raw[[head, head + 512], 6] = pg.BUDDY_COUNTS
        machine.raw[[head, head + 512], 5] = 9
        machine.free_lists.relink(zone, 9, np.array([head, head + 512]))

    err = expect_fault(mapping.verify, split)
    assert "not merged" in str(err) and err.pfn == head


def test_vfio_pin_and_unpin(engine, machine, mapping):
    pin = vfio_pin(mapping, 1000, 100_000, engine)
    try:
        assert pin.verify() == 100_000
        page = int(mapping.pfns[5000])
        assert int(machine.memmap["refcount"][page]) == 1 + GUP_PIN_COUNTING_BIAS
        machine.memmap["refcount"][page] -= 1
        with pytest.raises(VerifyError):
            pin.verify()
        machine.memmap["refcount"][page] += 1
        pin.unpin(engine)
        pin.verify()
        mapping.verify()
    finally:
        pin.close()


def test_a_failed_pin_leaves_the_machine_exactly_as_before(engine, machine, mapping):
    munmap(mapping, 250_000, 1, engine)  # one page the pin cannot get
    raw, zones = machine.raw.copy(), machine.zones.copy()
    with pytest.raises(JobFailedError) as info:  # 2 processes, on any machine: several chunks
        vfio_pin(mapping, 0, mapping.pages, engine, threads=2)
    err = info.value
    assert err.error == -EFAULT and err.chunk[0] <= 250_000 < err.chunk[1]
    assert err.undone  # completed chunks were pinned, then undone
    assert np.array_equal(raw, machine.raw) and np.array_equal(zones, machine.zones)
    mapping.verify()


def test_mapping_bad_input(machine, mapping):
    with pytest.raises(ValueError, match="free 4 MiB blocks"):
        Mapping(machine, 100 * GIB_PAGES)
    with pytest.raises(ValueError, match="inside the mapping"):
        munmap(mapping, mapping.pages - 10, 11)
    with pytest.raises(ValueError, match="inside the mapping"):
        vfio_pin(mapping, -1, 10)
    with pytest.raises(TypeError, match="start must be an int"):
        munmap(mapping, 1.5, 10)
    with Mapping(machine, 10) as unpopulated, pytest.raises(PadataError, match="not populated"):
        munmap(unpopulated, 0, 10)


def test_hugetlb_job_is_numa_aware():
    from padata_mp import Padata
    from padata_mp.topology import parse_synthetic

    with Padata(topology=parse_synthetic("2x1")) as engine, Machine.create("10G", 2) as machine:
        engine.attach(*machine.shared_arrays)
        deferred_init(machine, engine)
        with HugetlbPool(machine, "2M", {0: 64, 1: 64}) as pool:
            engine.attach(*pool.shared_arrays)
            run = hugetlb_alloc(pool, engine)
            pool.verify()
        (report,) = run.reports.values()
        # The job's processes were dealt over both nodes, one from each.
        node_of = {wid: node for wid, _, node in engine.workers}
        assert report.nworks == 2 and {node_of[wid] for wid in report.busy_s} == {0, 1}


def test_closed_pools_and_mappings_keep_their_pages(engine, machine):
    with HugetlbPool(machine, "2M", {1: 8}) as pool:
        engine.attach(*pool.shared_arrays)
        hugetlb_alloc(pool, engine)
    with Mapping(machine, 5000, node=1) as mapping:
        engine.attach(*mapping.shared_arrays)
        mmap_populate(mapping, engine)
        munmap(mapping, 100, 50, engine)
        held = mapping.allocated_ranges()
    # Their own shared memory is gone; their pages are still held, and the machine still proves.
    assert mapping.allocated_ranges() == held
    summary = machine.verify()
    assert summary.free_pages == summary.deferred_pages - pool.pages - (mapping.pages - 50)
