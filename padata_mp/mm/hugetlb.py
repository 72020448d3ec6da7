"""hugetlb on the simulated machine: the boot-time pool (padata's 6.9 user) and fallocate's clearing.

``HugetlbPool`` is hugetlb_pages_alloc_boot(): huge pages of 2 MiB or 1 GiB per node taken from the
buddy free lists and prepared as compound pages by one numa_aware job.  The coordinator takes the
blocks off the free lists first (one vectorised pass per node, the "zone lock" part); the job does
the memory-proportional part, every struct page of every huge page.  ``HugetlbFile`` is
hugetlbfs_fallocate() clearing its pages: pure store bandwidth over page frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..checks import integer
from ..errors import BadValueError, PadataError
from ..job import MtJob
from ..pool import Padata
from ..ranges import ceil_div
from ..shm import BlockOwner, SharedArray
from . import pages as pg
from .layout import Zone
from .machine import Machine
from .runner import NodeRun, run_work
from .sizes import parse_size
from .verify import VerifyError, compare_words

HUGE_ORDERS = {"2M": 9, "1G": 18}
HPAGE_BYTES = 2 << 20  # the huge page fallocate clears
FALLOCATE_MIN_CHUNK = 64  # huge pages: 128 MiB, a section's worth


@dataclass(frozen=True)
class PrepJob:
    """fn_arg of the pool's job: each unit (huge page) as its head pfn and its page->flags."""

    memmap: SharedArray
    units: SharedArray
    order: int


def prep_chunk(start: int, end: int, job: PrepJob) -> None:
    """thread_fn: prepare huge pages [start, end) of the pool, whatever their count (the 2024 bug
    was a caller that assumed one unit per call)."""
    units = job.units.array[start:end]
    for flags in np.unique(units[:, 1]):  # one node's huge pages at a time
        pg.prep_compound(job.memmap.array, units[units[:, 1] == flags, 0], job.order, int(flags))


class HugetlbPool(BlockOwner):
    """hugetlb's boot-time pool: ``per_node`` huge pages of ``size`` ("2M" or "1G") on each node (an
    int for every node, or ``{node: count}``), allocated after deferred init.

    A NodeWork: run it with ``hugetlb_alloc``.  Closing it unlinks its own shared memory; its huge
    pages stay allocated (hugetlb never gives boot pages back in this model), and the machine's
    verify() still counts them as held.  One numa_aware job over the pool's huge pages, as
    hugetlb_pages_alloc_boot() (6.9) runs: helpers dealt round-robin over the nodes.  Huge pages are
    taken as the buddy allocator would: 2 MiB from free order-9 blocks first, then by splitting
    order-10 blocks (an odd count leaves a free order-9 half); 1 GiB from 1 GiB-aligned runs of
    free order-10 blocks.  Asking for more than a node has free raises ValueError at once.
    """

    bytes_per_page = pg.STRUCT_PAGE_SIZE

    def __init__(self, machine: Machine, size: str = "2M", per_node: int | dict[int, int] = 1):
        if size not in HUGE_ORDERS:
            raise BadValueError(f"size must be one of {list(HUGE_ORDERS)}, got {size!r}")
        if not machine.initialised:
            raise PadataError("deferred init must run before huge pages can be allocated")
        counts = (
            per_node if isinstance(per_node, dict) else dict.fromkeys(range(len(machine.nodes)), per_node)
        )
        counts = {
            integer("a node", node): integer(f"the count for node {node}", n, 0) for node, n in counts.items()
        }
        for node in counts:
            if node not in range(len(machine.nodes)):
                raise BadValueError(f"node {node} is not a node of the machine (0-{len(machine.nodes) - 1})")
        self.machine, self.size, self.order = machine, size, HUGE_ORDERS[size]
        self.counts = {node: count for node, count in sorted(counts.items()) if count}
        if not self.counts:
            raise BadValueError("ask for at least one huge page")
        for node, count in self.counts.items():
            room = self.room(machine, size, node)
            if count > room:
                raise BadValueError(
                    f"node {node} has room for {room} huge pages of {size}, asked for {count}"
                )
        self.total = sum(self.counts.values())
        self.pages = self.total << self.order
        self.heads: dict[int, np.ndarray] = {}
        super().__init__()
        self._units = self._create((self.total, 2), np.int64)

    @property
    def shared_arrays(self) -> tuple[SharedArray, ...]:
        return (self._units,)

    def allocated_ranges(self) -> list[tuple[int, int]]:
        return [(int(h), int(h) + (1 << self.order)) for heads in self.heads.values() for h in heads]

    # -- NodeWork -------------------------------------------------------------------------------

    def begin(self, threads: dict[int, int]) -> dict[int, MtJob]:
        if self.heads:
            raise PadataError("this pool's huge pages are already allocated")
        units = self._units.array
        at = 0
        for node, count in self.counts.items():
            zone = self.machine.nodes[node].highest_zone
            heads = self._take(zone, count)
            units[at : at + count, 0] = heads
            units[at : at + count, 1] = pg.page_flags(node, zone.zone)
            self.heads[node] = heads
            at += count
        self.machine.users.append(self)
        # The kernel's job, with max_threads the CPUs of the nodes (6.9 used twice the nodes; 6.10
        # made it a boot parameter) and min_chunk half of each thread's share.
        max_threads = sum(threads[node] for node in self.counts)
        job = MtJob(
            prep_chunk,
            PrepJob(self.machine.shared_arrays[0], self._units, self.order),
            start=0,
            size=self.total,
            min_chunk=max(1, self.total // max_threads // 2),
            max_threads=max_threads,
            numa_aware=True,
            retry=True,  # a re-run rewrites its huge pages whole
        )
        return {next(iter(self.counts)): job}

    def end(self, node: int) -> None:
        pass  # the free lists were settled in begin

    def reset(self) -> None:
        self.heads = {}

    # -- taking blocks off the free lists -------------------------------------------------------

    @staticmethod
    def room(machine: Machine, size: str, node: int) -> int:
        """How many huge pages of ``size`` the node's free lists hold now."""
        zone = machine.nodes[node].highest_zone
        if size == "2M":
            return len(machine.free_lists.free_heads(zone, 9)) + 2 * len(
                machine.free_lists.free_heads(zone, pg.MAX_ORDER)
            )
        return len(_gigantic_slots(machine.free_lists.free_heads(zone, pg.MAX_ORDER)))

    def _take(self, zone: Zone, count: int) -> np.ndarray:
        """Heads of ``count`` huge pages taken off the zone's free lists (the lists relinked)."""
        machine = self.machine
        blocks10 = machine.free_lists.free_heads(zone, pg.MAX_ORDER)
        if self.order == HUGE_ORDERS["1G"]:
            heads = _gigantic_slots(blocks10)[:count]
            inside = np.isin(blocks10 >> self.order, heads >> self.order)
            machine.free_lists.relink(zone, pg.MAX_ORDER, blocks10[~inside])
            return heads
        blocks9 = machine.free_lists.free_heads(zone, 9)
        from9 = blocks9[:count]
        split = blocks10[: ceil_div(count - len(from9), 2)]
        halves = np.stack([split, split + 512], axis=1).ravel()
        from10, leftover = halves[: count - len(from9)], halves[count - len(from9) :]
        machine.raw[leftover, 6] = pg.BUDDY_COUNTS  # the unused half: a free order-9 block now
        machine.raw[leftover, 5] = 9
        machine.free_lists.relink(zone, pg.MAX_ORDER, blocks10[len(split) :])
        machine.free_lists.relink(zone, 9, np.concatenate([blocks9[len(from9) :], leftover]))
        return np.sort(np.concatenate([from9, from10]))

    # -- proof ----------------------------------------------------------------------------------

    def verify(self) -> int:
        """Prove the pool and the buddy allocator account for every page: machine.verify() for the
        free lists (every deferred page not in a huge page is free), then every huge page: as many
        as asked per node, aligned, inside its node, each struct page as prep_compound leaves it.
        Returns the huge pages proven; raises VerifyError at the first fault."""
        self.machine.verify()
        for node, count in self.counts.items():
            heads = self.heads.get(node, np.empty(0, np.int64))
            layout = self.machine.nodes[node]
            if len(heads) != count:
                raise VerifyError(f"node {node}: {len(heads)} huge pages, {count} asked for")
            wrong = heads[
                (heads % (1 << self.order) != 0) | (heads < layout.start_pfn) | (heads >= layout.end_pfn)
            ]
            if len(wrong):
                raise VerifyError(
                    f"pfn {wrong[0]}: huge page misaligned or off node {node}", pfn=int(wrong[0])
                )
            flags = pg.page_flags(node, layout.highest_zone.zone)
            for batch in np.array_split(heads, max(1, (len(heads) << self.order) >> 20)):
                _check_compound(self.machine.raw, batch, self.order, flags)
        return self.total


def _gigantic_slots(blocks10: np.ndarray) -> np.ndarray:
    """1 GiB-aligned pfns whose 256 order-10 blocks are all free."""
    per_gig = 1 << (HUGE_ORDERS["1G"] - pg.MAX_ORDER)
    slots, counts = np.unique(blocks10 >> HUGE_ORDERS["1G"], return_counts=True)
    return slots[counts == per_gig] << HUGE_ORDERS["1G"]


def _check_compound(raw: np.ndarray, heads: np.ndarray, order: int, flags: int) -> None:
    pfns = (heads[:, None] + np.arange(1 << order)).ravel()
    words = raw[pfns]
    head = pfns >> order << order
    is_head, is_first_tail = pfns == head, pfns == head + 1
    lru = pg.lru_address(pfns.astype(np.uint64))
    expect = (
        np.where(
            is_head,
            np.uint64(flags | pg.PG_HEAD),
            np.where(is_first_tail, np.uint64(flags | order), np.uint64(flags)),
        ),
        np.where(is_head, lru, pg.page_address(head.astype(np.uint64)) + np.uint64(1)),
        lru,
        np.where(is_head, np.uint64(0), np.uint64(pg.TAIL_MAPPING)),
        0,
        0,
        pg.FREE_COUNTS,
        0,
    )
    compare_words(words, pfns, expect, "a huge page")


def hugetlb_alloc(pool: HugetlbPool, engine: Padata | None = None, threads: int | None = None) -> NodeRun:
    """Allocate and prepare the pool's huge pages in parallel (``threads`` per node at most,
    default the node's CPUs)."""
    return run_work(pool, range(len(pool.machine.nodes)), engine, threads)


# -- fallocate ----------------------------------------------------------------------------------


def clear_chunk(start: int, end: int, frames: SharedArray) -> None:
    """thread_fn: clear_huge_page() for huge pages [start, end) of the file."""
    frames.array[start:end].fill(0)


class HugetlbFile(BlockOwner):
    """A hugetlbfs file of ``size`` bytes (whole 2 MiB pages) whose fallocate() clears every page:
    the page frames are a shared block, holding old data (a non-zero pattern) until cleared.  A
    NodeWork: run it with ``hugetlb_fallocate``."""

    bytes_per_page = pg.PAGE_SIZE  # bytes cleared per 4 KiB page

    def __init__(self, size: str | int, node: int = 0):
        self.huge_pages = parse_size(size) // HPAGE_BYTES
        if self.huge_pages < 1:
            raise BadValueError(f"a hugetlbfs file holds whole 2 MiB pages; {size!r} is less than one")
        self.node = node
        self.pages = self.huge_pages * (HPAGE_BYTES // pg.PAGE_SIZE)
        self.cleared = False
        super().__init__()
        self._frames = self._create((self.huge_pages, HPAGE_BYTES // 8), np.uint64)
        try:
            self.reset()
        except BaseException:
            self.close()
            raise

    @property
    def shared_arrays(self) -> tuple[SharedArray, ...]:
        return (self._frames,)

    def reset(self) -> None:
        """Old data in every frame again."""
        for lo in range(0, self.huge_pages, 128):
            self._frames.array[lo : lo + 128].fill(0x5A5A_5A5A_5A5A_5A5A)
        self.cleared = False

    def begin(self, threads: dict[int, int]) -> dict[int, MtJob]:
        job = MtJob(
            clear_chunk,
            self._frames,
            start=0,
            size=self.huge_pages,
            min_chunk=FALLOCATE_MIN_CHUNK,
            max_threads=threads[self.node],
            retry=True,
        )
        return {self.node: job}

    def end(self, node: int) -> None:
        self.cleared = True

    def verify(self) -> int:
        """Prove every frame is zero; returns the bytes proven."""
        if not self.cleared:
            raise VerifyError("the file has not been fallocated")
        for lo in range(0, self.huge_pages, 128):
            dirty = np.flatnonzero(self._frames.array[lo : lo + 128].any(axis=1))
            if len(dirty):
                raise VerifyError(f"huge page {lo + int(dirty[0])} of the file is not clear")
        return self.huge_pages * HPAGE_BYTES


def hugetlb_fallocate(file: HugetlbFile, engine: Padata | None = None, threads: int | None = None) -> NodeRun:
    """Clear the file's huge pages in parallel (``threads`` at most, default the node's CPUs)."""
    return run_work(file, [file.node], engine, threads)
