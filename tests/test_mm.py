"""The simulated machine and parallel deferred init, proven by verify() and by a serial run."""

import logging

import numpy as np
import pytest

from padata_mp import Padata, PadataError, read_topology
from padata_mp.mm import Machine, VerifyError, deferred_init, layout, parse_size
from padata_mp.mm import pages as pg

SECTION = pg.PAGES_PER_SECTION
GIB_PAGES = (1 << 30) // pg.PAGE_SIZE


@pytest.fixture(scope="module")
def two_node_engine():
    from padata_mp.topology import parse_synthetic

    with Padata(topology=parse_synthetic("2x1")) as e:
        yield e


def run(mem, nodes, engine, **kw):
    machine = Machine.create(mem, nodes, holes=kw.pop("holes", None))
    engine.attach(*machine.shared_arrays)
    result = deferred_init(machine, engine, **kw)
    return machine, result


def test_parse_size():
    assert parse_size("512M") == 512 << 20
    assert parse_size("64G") == 64 << 30
    assert parse_size("1T") == 1 << 40
    assert parse_size("1.5G") == 3 << 29
    assert parse_size(8192) == 8192
    for bad in ("", "12Q", "-1G", "G", "0", 0, 100):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_layout_is_x86_64():
    (node,) = layout(8 * GIB_PAGES, 1)
    assert [(z.name, z.start_pfn, z.end_pfn) for z in node.zones] == [
        ("DMA", 0, 4096),
        ("DMA32", 4096, 4 * GIB_PAGES),
        ("Normal", 4 * GIB_PAGES, 8 * GIB_PAGES),
    ]
    # The first section of the highest zone is initialised early; the rest is deferred.
    assert node.highest_zone.first_deferred_pfn == 4 * GIB_PAGES + SECTION
    nodes = layout(64 * GIB_PAGES, 2)
    assert [z.name for z in nodes[1].zones] == ["Normal"]
    assert nodes[1].start_pfn == 32 * GIB_PAGES and nodes[1].start_pfn % SECTION == 0
    for bad in (0, -1, 65 * 8):  # 64 GiB has 512 sections
        with pytest.raises(ValueError, match="nodes must be between 1 and"):
            layout(64 * GIB_PAGES, bad)


def test_creation_poisons_only_the_deferred_pages():
    with Machine.create("5G", 1) as m:
        deferred = m.deferred_pfns()
        assert len(deferred) == GIB_PAGES - SECTION
        assert (m.raw[deferred[0] : deferred[-1] + 1] == np.uint64(2**64 - 1)).all()
        early = m.memmap[: deferred[0]]
        assert (early["refcount"] == 1).all() and (early["mapcount"] == -1).all()
        assert (early["flags"] & pg.PG_RESERVED != 0).all()


@pytest.mark.parametrize(
    ("mem", "nodes", "holes"),
    [
        ("8G", 1, None),
        ("12G", 2, None),
        ("13G", 3, None),
        # Not a multiple of a section, and of MAX_ORDER: partial pieces at the end go one by one.
        (8 * (1 << 30) + 5 * SECTION * 4096 + 777 * 4096, 1, None),
        # Holes: inside a section, across sections, at the start of the deferred range.
        (
            "9G",
            2,
            [
                (4 * GIB_PAGES + SECTION + 3, 4 * GIB_PAGES + SECTION + 2000),
                (5 * GIB_PAGES - 7, 5 * GIB_PAGES + 70000),
            ],
        ),
        # A node whose highest zone is smaller than one section: nothing deferred there.
        (4 * (1 << 30) + 64 * (1 << 20), 1, None),
    ],
)
def test_parallel_init_verifies(two_node_engine, mem, nodes, holes):
    machine, result = run(mem, nodes, two_node_engine, holes=holes)
    with machine:
        summary = machine.verify()
        assert summary.free_pages == summary.deferred_pages == len(machine.deferred_pfns()) == result.pages
        assert set(result.node_ms) == set(range(nodes))
        deferred = machine.deferred_pfns()
        pages = machine.memmap[deferred]
        assert (pages["refcount"] == 0).all()
        assert (pages["mapping"] == 0).all() and (pages["memcg_data"] == 0).all()
        assert ((pages["mapcount"] == -1) | (pages["mapcount"] == pg.MAPCOUNT_BUDDY)).all()


def test_result_equals_a_single_process_run(two_node_engine):
    holes = [(4 * GIB_PAGES + 3 * SECTION + 5, 4 * GIB_PAGES + 3 * SECTION + 3000)]
    with Padata(1) as single:
        one, _ = run("7G", 2, single, threads=1, holes=holes)
    many, _ = run("7G", 2, two_node_engine, holes=holes)
    with one, many:
        assert (one.raw == many.raw).all()
        assert (one.pageblocks == many.pageblocks).all()
        assert (one.zones == many.zones).all()


def test_logs_the_kernels_line(two_node_engine, caplog):
    caplog.set_level(logging.INFO, logger="padata_mp.mm")
    machine, result = run("6G", 2, two_node_engine)
    machine.close()
    lines = [r.getMessage() for r in caplog.records]
    for node, ms in result.node_ms.items():
        assert f"node {node} deferred pages initialised in {round(ms)}ms" in lines


def test_init_uses_the_kernels_job(two_node_engine):
    machine, result = run("12G", 2, two_node_engine, threads=2)
    with machine:
        for node, report in result.reports.items():
            assert report.nworks <= 2
            zone = machine.nodes[node].highest_zone
            starts = sorted(s for s, _, _ in report.chunks)
            assert starts[0] == zone.first_deferred_pfn
            assert all(s % SECTION == 0 for s in starts)
            assert report.chunk_size % SECTION == 0


@pytest.mark.parametrize("nodes", [1, 2])
def test_the_calling_thread_is_a_caller_where_it_stays_on_the_jobs_node(engine, two_node_engine, nodes):
    """As the kernel's caller works too: the calling thread runs the last node's job itself where
    every CPU it may run on is that node's host's (any node, on a one-node host); with
    on_progress, or where it would leave the node, every job is a worker's."""
    import os

    from padata_mp import CALLER

    on = engine if nodes == 1 else two_node_engine
    hosts = on.topology.nodes_with_cpus
    allowed = os.sched_getaffinity(0)
    here = [k for k in range(nodes) if len(hosts) == 1 or allowed <= set(hosts[k % len(hosts)].cpus)]
    machine, result = run(f"{4 * nodes}G", nodes, on, threads=1)
    with machine:
        called_here = [k for k, report in result.reports.items() if CALLER in report.busy_s]
        assert called_here == here[-1:]
        machine.reset()
        result = deferred_init(machine, on, threads=1, on_progress=lambda done: None)
        assert all(CALLER not in report.busy_s for report in result.reports.values())
        machine.verify()


@pytest.fixture(scope="module")
def verified(two_node_engine):
    machine, _ = run("6G", 2, two_node_engine, holes=[(5 * GIB_PAGES + 10, 5 * GIB_PAGES + 1500)])
    machine.verify()
    yield machine
    machine.close()


def inject(machine, fault):
    """Apply ``fault`` to a copy of the machine's state, verify, and restore."""
    saved = machine.raw.copy(), machine.zones.copy(), machine.pageblocks.copy()
    try:
        fault(machine)
        with pytest.raises(VerifyError) as info:
            machine.verify()
        return info.value
    finally:
        machine.raw[:], machine.zones[:], machine.pageblocks[:] = saved


def heads(machine, order):
    pfns = machine.deferred_pfns()
    return pfns[
        (machine.memmap["mapcount"][pfns] == pg.MAPCOUNT_BUDDY) & (machine.memmap["private"][pfns] == order)
    ]


def test_verify_catches_a_wrong_refcount(verified):
    pfn = int(verified.deferred_pfns()[12345])
    err = inject(verified, lambda m: m.memmap["refcount"].__setitem__(pfn, 1))
    assert err.pfn == pfn and err.field == "mapcount/refcount"


def test_verify_catches_a_block_listed_twice(verified):
    a, b = heads(verified, pg.MAX_ORDER)[[3, 7]]

    def fault(m):  # b's successor link now points at a as well
        m.raw[b, 1] = pg.lru_address(int(a))

    err = inject(verified, fault)
    assert "list" in str(err) and err.field == "lru"


def test_verify_catches_a_lost_block(verified):
    a, b, c = heads(verified, pg.MAX_ORDER)[[4, 5, 6]]

    def fault(m):  # unlink b: a and c point at each other; b still looks free
        m.raw[a, 1] = pg.lru_address(int(c))
        m.raw[c, 2] = pg.lru_address(int(a))

    err = inject(verified, fault)
    assert err.pfn == b and err.field == "lru"


def test_verify_catches_a_lost_block_and_its_count(verified):
    b = int(heads(verified, pg.MAX_ORDER)[5])

    def fault(m):  # the block is gone from the list and the count, and its head is cleared
        prev, nxt = m.raw[b, 2], m.raw[b, 1]
        m.raw[pg.lru_pfn(prev), 1] = nxt
        m.raw[pg.lru_pfn(nxt), 2] = prev
        m.raw[b, 6] = pg.FREE_COUNTS
        m.raw[b, 5] = 0
        m.raw[b, 1] = m.raw[b, 2] = pg.lru_address(b)
        z = m.nodes[0].highest_zone
        m.zones[z.node, z.zone]["nr_free"][pg.MAX_ORDER] -= 1
        m.zones[z.node, z.zone]["managed_pages"] -= 1024

    err = inject(verified, fault)
    assert "free" in str(err) and "deferred" in str(err)


def test_verify_catches_a_broken_prev_link(verified):
    b = int(heads(verified, pg.MAX_ORDER)[9])
    err = inject(verified, lambda m: m.raw.__setitem__((b, 2), pg.lru_address(b + 1024 * 40)))
    assert err.field == "lru"


def test_verify_catches_a_poisoned_page_and_a_bad_pageblock(verified):
    pfn = int(verified.deferred_pfns()[-1])
    err = inject(verified, lambda m: m.raw.__setitem__(pfn, np.uint64(2**64 - 1)))
    assert err.pfn == pfn
    err = inject(verified, lambda m: m.pageblocks.__setitem__(-1, pg.POISON))
    assert err.field == "pageblock"


def test_bad_input(two_node_engine):
    with pytest.raises(ValueError, match="hole"):
        Machine.create("8G", 1, holes=[(10, 5)])
    with pytest.raises(ValueError, match="overlap"):
        Machine.create("8G", 1, holes=[(10, 50), (40, 60)])
    with pytest.raises(ValueError, match="nodes"):
        Machine.create("1G", 9)
    with Machine.create("5G", 1) as m:
        with pytest.raises(VerifyError, match="has not run"):
            m.verify()
        with pytest.raises(ValueError, match="threads"):
            deferred_init(m, two_node_engine, threads=0)
        deferred_init(m, two_node_engine)
        with pytest.raises(PadataError, match="already"):
            deferred_init(m, two_node_engine)


def test_a_helper_killed_during_init_costs_time_not_pages():
    import os
    import random
    import signal
    import threading

    with Padata(2) as e, Machine.create("64G", 1) as m:
        e.attach(*m.shared_arrays)
        result = None
        rng = random.Random(3)
        for _ in range(40):  # until the kill lands while the helper holds a chunk
            m.reset()
            killer = threading.Timer(rng.uniform(0.01, 0.1), os.kill, (e.workers[0][1], signal.SIGKILL))
            killer.start()
            result = deferred_init(m, e, threads=2)
            killer.join()
            summary = m.verify()
            assert summary.free_pages == summary.deferred_pages
            if result.retried:
                break
        assert result.retried, "the helper was never killed while it held a chunk"
        # The replacement worker joins the next run.
        m.reset()
        assert deferred_init(m, e, threads=2).reports[0].nworks == 2
        m.verify()


def test_struct_pages_are_placed_on_their_host_node():
    with Machine.create("12G", 3, host_nodes=(0, 1)) as m:
        assert m.host_node == {0: 0, 1: 1, 2: 0}
        placement = m.placement()
        # A node's pages are on the host node meant for them where that node has memory; where it
        # does not exist (one-node hosts have no node 1), the preference could not hold.  Where
        # move_pages is not allowed, nothing is claimed.
        with_memory = {n.id for n in read_topology().nodes if n.mem_bytes}
        for node, (want, fraction) in placement.items():
            assert want == m.host_node[node]
            assert fraction in ((None, 1.0) if want in with_memory else (None, 0.0)), (node, want, fraction)


def test_creating_a_machine_says_what_it_is_doing():
    said: list[str] = []
    with Machine.create("40G", on_progress=said.append):
        pass
    reserving = [s for s in said if s.startswith("reserving and mapping 0.62 GiB of struct pages")]
    # 640 MiB in 256 MiB pieces: 3 reserved, then 3 mapped, each said as it is done.
    assert [s.rsplit(" ", 1)[1] for s in reserving] == ["20%", "40%", "50%", "70%", "90%", "100%"]
    assert said[-1].startswith("early boot")


def test_the_default_kernel_is_the_fastest_here_and_named(engine, monkeypatch):
    from padata_mp import native
    from padata_mp.mm.kernels import choose_kernel

    built = native.build("library").path is not None
    expected = choose_kernel("auto")[0]
    assert expected == ("numpy" if not built else expected)
    with Machine.create("5G") as machine:
        result = deferred_init(machine, engine)
        assert result.kernel == expected and result.attach_ms > 0
        machine.verify()
    if built:
        assert expected in ("c", "c-stream")
    # No compiler: numpy, and it says so in the result.
    monkeypatch.setattr("padata_mp.mm.kernels.build", lambda kind: native.Built(None, "no C compiler"))
    with Machine.create("5G") as machine:
        result = deferred_init(machine, engine)
        assert result.kernel == "numpy"
        machine.verify()
    with Machine.create("5G") as machine:
        assert deferred_init(machine, engine, kernel="numpy").kernel == "numpy"
        machine.verify()
