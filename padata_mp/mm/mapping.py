"""A process's anonymous mapping on the simulated machine: populated, unmapped with buddy merging,
and pinned for VFIO with undo.

A ``Mapping`` is backed by whole order-10 blocks (4 MiB) taken off a node's free lists, so virtual
page v is pfn ``blocks[v >> 10] + (v & 1023)`` and the pages of one block are only ever this
mapping's or free.  That keeps every buddy merge inside a block, so chunks aligned to blocks never
merge across each other: each chunk works out the free blocks of the blocks it owns and records
them, and the coordinator splices them into the zone's lists after the job, as deferred init does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..checks import integer
from ..errors import BadValueError, PadataError
from ..job import MtJob
from ..pool import Padata
from ..ranges import ceil_div, roundup
from ..shm import BlockOwner, SharedArray
from . import pages as pg
from .buddy import record_heads
from .machine import Machine
from .runner import NodeRun, run_work
from .verify import VERIFY_BLOCK, VerifyError, compare_words

ANON_MAPPING = 0xFFFF_8881_2000_0001  # page->mapping of an anonymous page: its anon_vma | PAGE_MAPPING_ANON
MAPPED_COUNTS = pg.counts_word(0, 1)  # mapped once, one reference
GUP_PIN_COUNTING_BIAS = 1024  # what pin_user_pages() adds to a page's refcount
EFAULT = 14
BLOCK = pg.MAX_ORDER_NR_PAGES
SECTION = pg.PAGES_PER_SECTION


@dataclass(frozen=True)
class MapJob:
    """fn_arg of a mapping's jobs: shared handles and the node's page->flags."""

    memmap: SharedArray
    blocks: SharedArray  # pfn of each backing block
    pfns: SharedArray  # per virtual page, its pfn; -1 once unmapped
    records: SharedArray  # per section of virtual pages, per order: the chain of freed heads
    flags: int


def _runs(job: MapJob, start: int, end: int) -> list[tuple[int, int, int]]:
    """Virtual pages [start, end) as ``(vpn_start, vpn_end, pfn_start)`` runs contiguous in both."""
    first, last = start // BLOCK, (end - 1) // BLOCK
    blocks = job.blocks.array[first : last + 1]
    breaks = np.flatnonzero(np.diff(blocks) != BLOCK) + 1
    runs = []
    for lo, hi in zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(blocks)].tolist(), strict=True):
        vlo, vhi = max(start, (first + lo) * BLOCK), min(end, (first + hi) * BLOCK)
        runs.append((vlo, vhi, int(blocks[lo]) + vlo - (first + lo) * BLOCK))
    return runs


def populate_chunk(start: int, end: int, job: MapJob) -> None:
    """thread_fn of MAP_POPULATE: map every page of [start, end) as an anonymous page."""
    raw, pfns = job.memmap.array, job.pfns.array
    for vlo, vhi, plo in _runs(job, start, end):
        phi = plo + vhi - vlo
        pg.init_pages(raw, plo, phi, job.flags | pg.PG_UPTODATE, MAPPED_COUNTS, ANON_MAPPING)
        raw[plo:phi, 4] = np.arange(vlo, vhi, dtype=np.uint64)  # page->index: the virtual page
        pfns[vlo:vhi] = np.arange(plo, phi)


def munmap_chunk(start: int, end: int, job: MapJob) -> None:
    """thread_fn of munmap: free the mapped pages of [start, end) with buddy merging, section by
    section of virtual pages, and record each section's new free blocks, linked, for the splice.

    A block wholly freed becomes one order-10 block; in a block partly free, the free blocks are
    worked out anew from all its free pages (the old ones were taken off the lists by the
    coordinator).  Not idempotent: a block a call freed whole is skipped by a second call, as
    already free, so the job is not re-run after a helper dies."""
    raw, pfns, records = job.memmap.array, job.pfns.array, job.records.array
    for section in range(start // SECTION, ceil_div(end, SECTION)):
        lo, hi = max(start, section * SECTION), min(end, (section + 1) * SECTION)
        heads: dict[int, list[np.ndarray]] = {order: [] for order in range(pg.NR_ORDERS)}
        for vlo, vhi, plo in _runs(job, lo, hi):
            _free_run(raw, pfns, job.flags, vlo, vhi, plo, heads)
        record_heads(raw, records[section], heads)


def _free_run(
    raw: np.ndarray,
    pfns: np.ndarray,
    flags: int,
    vlo: int,
    vhi: int,
    plo: int,
    heads: dict[int, list[np.ndarray]],
) -> None:
    """Free virtual pages [vlo, vhi), backed by pfns from ``plo`` on; add the free blocks they make
    to ``heads`` by order."""
    offset = plo - vlo  # pfn = vpn + offset all along the run
    touched = np.arange(vlo // BLOCK * BLOCK, vhi, BLOCK)
    rows = pfns[touched[0] : touched[-1] + BLOCK].reshape(-1, BLOCK)
    all_mapped, all_free = (rows >= 0).all(axis=1), (rows < 0).all(axis=1)
    inside = (touched >= vlo) & (touched + BLOCK <= vhi)
    # Blocks wholly in the range and wholly mapped become one order-10 block each: no merging.
    whole = touched[inside & all_mapped]
    for group in np.split(whole, np.flatnonzero(np.diff(whole) != BLOCK) + 1):
        if len(group):
            pg.init_pages(raw, int(group[0]) + offset, int(group[-1]) + BLOCK + offset, flags, pg.FREE_COUNTS)
    raw[whole + offset, 6] = pg.BUDDY_COUNTS
    raw[whole + offset, 5] = pg.MAX_ORDER
    heads[pg.MAX_ORDER].append(whole + offset)
    # Blocks partly in the range, or partly free already: merge everything free in them now.  A
    # block free before is on the lists already: it is left alone.
    partly = touched[~(inside & all_mapped) & ~all_free]
    pfns[vlo:vhi] = -1
    for v in partly.tolist():
        pages = np.flatnonzero(pfns[v : v + BLOCK] < 0) + v + offset
        pg.init_pages(raw, max(vlo, v) + offset, min(vhi, v + BLOCK) + offset, flags, pg.FREE_COUNTS)
        raw[pages, 6] = pg.FREE_COUNTS  # pages free before are no longer heads of their old blocks
        raw[pages, 5] = 0
        raw[pages, 1] = raw[pages, 2] = pg.lru_address(pages.astype(np.uint64))
        for order, blocks in pg.merge_buddies({0: pages}).items():
            raw[blocks, 6] = pg.BUDDY_COUNTS
            raw[blocks, 5] = order
            heads[order].append(blocks)


@dataclass(frozen=True)
class PinJob:
    """fn_arg of a VFIO pin: the mapping's handles and the DMA's pfn list (per pinned page)."""

    mapping: MapJob
    iova_pfns: SharedArray
    first_vpn: int


def pin_chunk(start: int, end: int, job: PinJob) -> int:
    """thread_fn of VFIO_IOMMU_MAP_DMA (the 2022 RFC): pin [start, end), raising each page's
    refcount by GUP_PIN_COUNTING_BIAS and recording its pfn.  An unmapped page is -EFAULT, as
    get_user_pages() says; the pages this call pinned before it are unpinned first, so a failing
    call leaves its range as it found it."""
    unmapped = np.flatnonzero(job.mapping.pfns.array[start:end] < 0)
    stop = start + int(unmapped[0]) if len(unmapped) else end
    if stop > start:
        _pin(job, start, stop, pin=True)
    if len(unmapped):
        if stop > start:
            _pin(job, start, stop, pin=False)
        return -EFAULT
    return 0


def unpin_chunk(start: int, end: int, job: PinJob) -> None:
    """undo_fn of the pin: drop the bias and forget the pfns of [start, end)."""
    _pin(job, start, end, pin=False)


def _pin(job: PinJob, start: int, end: int, pin: bool) -> None:
    raw, iova = job.mapping.memmap.array, job.iova_pfns.array
    bias = np.uint64(GUP_PIN_COUNTING_BIAS << 32)  # _refcount is word 6's high half
    for vlo, vhi, plo in _runs(job.mapping, start, end):
        counts = raw[plo : plo + vhi - vlo, 6]
        (np.add if pin else np.subtract)(counts, bias, out=counts)
        done = iova[vlo - job.first_vpn : vhi - job.first_vpn]
        done[:] = np.arange(plo, plo + vhi - vlo) if pin else -1


class Mapping(BlockOwner):
    """A process's anonymous mapping of ``pages`` pages (rounded up to whole 4 MiB blocks) on
    ``node`` of a machine after deferred init.  ``mmap_populate`` maps it, ``munmap`` frees ranges
    of it back to the buddy lists with merging, ``vfio_pin`` pins ranges with undo.  Use it as a
    context manager: its shared memory is unlinked on exit (its pages stay with the machine)."""

    def __init__(self, machine: Machine, pages: int, node: int = 0):
        if not machine.initialised:
            raise PadataError("deferred init must run before pages can be mapped")
        node = integer("node", node, 0, len(machine.nodes) - 1)
        pages = integer("pages", pages, 1)
        self.machine, self.node = machine, node
        self.zone = machine.nodes[node].highest_zone
        self.pages = roundup(pages, BLOCK)
        free = len(machine.free_lists.free_heads(self.zone, pg.MAX_ORDER))
        if self.pages // BLOCK > free:
            raise BadValueError(
                f"node {node} has {free} free 4 MiB blocks ({free * BLOCK} pages), "
                f"asked for {self.pages} pages"
            )
        self.populated = False
        self._held_after_close: list[tuple[int, int]] | None = None
        self.partial = np.zeros(self.pages // BLOCK, bool)  # blocks partly free: their free blocks listed
        super().__init__()
        try:
            made = [
                self._create(self.pages // BLOCK, np.int64),
                self._create(self.pages, np.int64),
                self._create((ceil_div(self.pages, SECTION), pg.NR_ORDERS, 3), np.int64),
            ]
        except BaseException:
            self.close()
            raise
        flags = pg.page_flags(node, self.zone.zone)
        blocks, pfns, records = made
        self.job_arg = MapJob(machine.shared_arrays[0], blocks, pfns, records, flags)

    @property
    def shared_arrays(self) -> tuple[SharedArray, ...]:
        return tuple(self._blocks)

    @property
    def pfns(self) -> np.ndarray:
        """Per virtual page, its pfn; -1 where unmapped."""
        return self.job_arg.pfns.array

    def allocated_ranges(self) -> list[tuple[int, int]]:
        if self._held_after_close is not None:
            return self._held_after_close
        mapped = np.sort(self.pfns[self.pfns >= 0])
        if not len(mapped):
            return []
        breaks = np.flatnonzero(np.diff(mapped) != 1) + 1
        starts, ends = mapped[np.r_[0, breaks]], mapped[np.r_[breaks - 1, len(mapped) - 1]] + 1
        return list(zip(starts.tolist(), ends.tolist(), strict=True))

    def verify(self, extra_refs: np.ndarray | None = None) -> int:
        """Prove the buddy side (machine.verify(): every page not mapped is free, in well-formed
        lists), that the free pages of the mapping's blocks are fully merged (no two free buddies
        of one order), and every mapped page: an anonymous page at its virtual page, mapped once,
        refcount 1 (plus ``extra_refs`` per virtual page, as pins add).  Returns the pages mapped;
        raises VerifyError."""
        self.machine.verify()
        if self.populated:
            self._check_merged()
        vpns = np.flatnonzero(self.pfns >= 0)
        for lo in range(0, len(vpns), VERIFY_BLOCK):
            v = vpns[lo : lo + VERIFY_BLOCK]
            pfns = self.pfns[v]
            words = self.machine.raw[pfns]
            lru = pg.lru_address(pfns.astype(np.uint64))
            refs = np.uint64(1) if extra_refs is None else extra_refs[v].astype(np.uint64) + np.uint64(1)
            counts = refs << np.uint64(32)  # _refcount in the high half; _mapcount 0: mapped once
            expect = (
                self.job_arg.flags | pg.PG_UPTODATE,
                lru,
                lru,
                ANON_MAPPING,
                v.astype(np.uint64),
                0,
                counts,
                0,
            )
            compare_words(words, pfns, expect, "a mapped page")
        return len(vpns)

    def reset(self, pfns: np.ndarray) -> None:
        """Back to mapping ``pfns``, a copy of ``.pfns`` taken when the mapping was populated and
        nothing of it unmapped, the machine restored to that moment (Machine.restore_state): for
        runs that repeat munmap or a pin from one starting state."""
        self.pfns[:] = pfns
        self.partial[:] = False

    def close(self) -> None:
        """Unlink the mapping's own shared memory (idempotent).  Its pages stay mapped, as when a
        process exits without unmapping them in this model: the machine still counts them held."""
        if self._blocks and self in self.machine.users:
            self._held_after_close = self.allocated_ranges()
        super().close()

    def _check_merged(self) -> None:
        """No free block in the mapping's blocks has its buddy free at the same order."""
        raw, blocks = self.machine.raw, self.job_arg.blocks.array
        for lo in range(0, len(blocks), 1024):
            pfns = (blocks[lo : lo + 1024, None] + np.arange(BLOCK)).ravel()
            is_head = raw[pfns, 6] == np.uint64(pg.BUDDY_COUNTS)
            heads, orders = pfns[is_head], raw[pfns[is_head], 5].astype(np.int64)
            keys = heads * pg.NR_ORDERS + orders
            buddies = (heads ^ (1 << orders)) * pg.NR_ORDERS + orders
            unmerged = heads[(orders < pg.MAX_ORDER) & np.isin(buddies, keys)]
            if len(unmerged):
                pfn = int(unmerged[0])
                raise VerifyError(f"pfn {pfn}: free block and its buddy both free, not merged", pfn=pfn)


def _check_range(mapping: Mapping, start: int, pages: int) -> None:
    start, pages = integer("start", start), integer("pages", pages)
    if start < 0 or pages < 1 or start + pages > mapping.pages:
        raise BadValueError(
            f"the range must lie inside the mapping's {mapping.pages} pages; got start {start}, pages {pages}"
        )


def _check_populated(mapping: Mapping) -> None:
    if not mapping.populated:
        raise PadataError("the mapping is not populated: run mmap_populate first")


class Populate:
    """MAP_POPULATE as a NodeWork: take the blocks off the node's free lists, map every page."""

    bytes_per_page = pg.STRUCT_PAGE_SIZE

    def __init__(self, mapping: Mapping):
        self.mapping, self.pages = mapping, mapping.pages

    def begin(self, threads: dict[int, int]) -> dict[int, MtJob]:
        m = self.mapping
        if m.populated:
            raise PadataError("the mapping is populated already")
        free = m.machine.free_lists.free_heads(m.zone, pg.MAX_ORDER)
        taken = len(m.partial)
        if taken > len(free):
            raise BadValueError(
                f"node {m.node} has {len(free)} free 4 MiB blocks left, the mapping needs {taken}"
            )
        m.job_arg.blocks.array[:] = free[:taken]
        m.machine.free_lists.relink(m.zone, pg.MAX_ORDER, free[taken:])
        m.machine.users.append(m)
        job = MtJob(
            populate_chunk,
            m.job_arg,
            0,
            m.pages,
            align=SECTION,
            min_chunk=SECTION,
            max_threads=threads[m.node],
            retry=True,
        )
        return {m.node: job}

    def end(self, node: int) -> None:
        self.mapping.populated = True

    def verify(self) -> int:
        return self.mapping.verify()


class Munmap:
    """munmap of virtual pages [start, start + pages) as a NodeWork.  Pages already unmapped are
    left alone, as munmap does.  Not re-run after a helper dies (retry=False): the pages it freed
    are unmapped for good, so the error names what was not done."""

    bytes_per_page = pg.STRUCT_PAGE_SIZE

    def __init__(self, mapping: Mapping, start: int, pages: int):
        _check_range(mapping, start, pages)
        self.mapping, self.start, self.pages = mapping, start, pages
        self.first_block, self.last_block = start // BLOCK, (start + pages - 1) // BLOCK  # touched

    def begin(self, threads: dict[int, int]) -> dict[int, MtJob]:
        m = self.mapping
        _check_populated(m)
        # The free blocks of partly free blocks the job touches come off the lists: the job works
        # out those blocks' free blocks anew.
        first, last = self.first_block, self.last_block
        for b in (np.flatnonzero(m.partial[first : last + 1]) + first).tolist():
            base = int(m.job_arg.blocks.array[b])
            words = m.machine.raw[base : base + BLOCK]
            for pfn in (np.flatnonzero(words[:, 6] == np.uint64(pg.BUDDY_COUNTS)) + base).tolist():
                m.machine.free_lists.list_del(m.zone, int(m.machine.raw[pfn, 5]), pfn)
        job = MtJob(
            munmap_chunk,
            m.job_arg,
            self.start,
            self.pages,
            align=SECTION,
            min_chunk=SECTION,
            max_threads=threads[m.node],
        )
        return {m.node: job}

    def end(self, node: int) -> None:
        m = self.mapping
        sections = m.job_arg.records.array[self.start // SECTION : ceil_div(self.start + self.pages, SECTION)]
        m.machine.free_lists.splice_records(m.zone, sections)
        first, last = self.first_block, self.last_block
        m.partial[first : last + 1] = False
        for b in {first, last}:
            row = m.pfns[b * BLOCK : (b + 1) * BLOCK]
            m.partial[b] = bool((row < 0).any() and (row >= 0).any())

    def verify(self) -> int:
        return self.mapping.verify()


class VfioPin(BlockOwner):
    """VFIO page pinning of virtual pages [start, start + pages) as a NodeWork, with the RFC's undo:
    a chunk meeting an unmapped page returns -EFAULT and the engine unpins every completed chunk,
    so the machine is left exactly as before.  ``close()`` unlinks the DMA's pfn list; it does not
    unpin: call ``unpin`` first."""

    bytes_per_page = pg.STRUCT_PAGE_SIZE

    def __init__(self, mapping: Mapping, start: int, pages: int):
        _check_range(mapping, start, pages)
        self.mapping, self.start, self.pages = mapping, start, pages
        self.pinned = False
        super().__init__()
        self._iova = self._create(pages, np.int64)
        self._iova.array.fill(-1)

    @property
    def iova_pfns(self) -> np.ndarray:
        """The DMA's pfn list: per pinned page its pfn, -1 where not pinned."""
        return self._iova.array

    @property
    def shared_arrays(self) -> tuple[SharedArray, ...]:
        return (self._iova,)

    def begin(self, threads: dict[int, int]) -> dict[int, MtJob]:
        if self.pinned:
            raise PadataError("this range is pinned already")
        _check_populated(self.mapping)
        return {self.mapping.node: self.job(threads[self.mapping.node])}

    def job(self, max_threads: int, unpin: bool = False) -> MtJob:
        """The pin job (or with ``unpin``, the unpin job) of the range, blocks never split."""
        return MtJob(
            unpin_chunk if unpin else pin_chunk,
            PinJob(self.mapping.job_arg, self._iova, self.start),
            self.start,
            self.pages,
            align=BLOCK,
            min_chunk=SECTION,
            max_threads=max_threads,
            undo_fn=None if unpin else unpin_chunk,
        )

    def end(self, node: int) -> None:
        self.pinned = True

    def reset(self) -> None:
        self.pinned = False
        self._iova.array.fill(-1)

    def verify(self) -> int:
        """Prove every page of the range is pinned once (refcount 1 + the bias) with its pfn
        recorded, and the rest of the mapping unpinned."""
        m = self.mapping
        extra = np.zeros(m.pages, np.int64)
        extra[self.start : self.start + self.pages] = GUP_PIN_COUNTING_BIAS if self.pinned else 0
        m.verify(extra)
        want = m.pfns[self.start : self.start + self.pages] if self.pinned else -1
        bad = np.flatnonzero(self._iova.array != want)
        if len(bad):
            raise VerifyError(f"virtual page {self.start + int(bad[0])}: the DMA's pfn list is wrong")
        return self.pages

    def unpin(self, engine: Padata | None = None, threads: int | None = None) -> NodeRun:
        """VFIO_IOMMU_UNMAP_DMA: unpin the whole range in parallel (undo_fn as the thread_fn)."""
        if not self.pinned:
            raise PadataError("this range is not pinned")
        run = run_work(_Unpin(self), [self.mapping.node], engine, threads)
        self.pinned = False
        return run


@dataclass
class _Unpin:
    """Unpinning as a NodeWork."""

    pin: VfioPin
    bytes_per_page = pg.STRUCT_PAGE_SIZE

    @property
    def pages(self) -> int:
        return self.pin.pages

    def begin(self, threads: dict[int, int]) -> dict[int, MtJob]:
        node = self.pin.mapping.node
        return {node: self.pin.job(threads[node], unpin=True)}

    def end(self, node: int) -> None:
        pass

    def verify(self) -> object:
        return self.pin.verify()


def mmap_populate(mapping: Mapping, engine: Padata | None = None, threads: int | None = None) -> NodeRun:
    """Map every page of ``mapping``, in parallel on its node."""
    return run_work(Populate(mapping), [mapping.node], engine, threads)


def munmap(
    mapping: Mapping, start: int, pages: int, engine: Padata | None = None, threads: int | None = None
) -> NodeRun:
    """Unmap virtual pages [start, start + pages) of ``mapping``, freeing them to the buddy lists
    with merging, in parallel on its node."""
    return run_work(Munmap(mapping, start, pages), [mapping.node], engine, threads)


def vfio_pin(
    mapping: Mapping, start: int, pages: int, engine: Padata | None = None, threads: int | None = None
) -> VfioPin:
    """Pin virtual pages [start, start + pages) for DMA, in parallel with undo.  Returns the pin
    (its ``iova_pfns`` and ``verify``); close it when done.  On an unmapped page raises
    JobFailedError with ``error == -EFAULT`` after every completed chunk was unpinned."""
    pin = VfioPin(mapping, start, pages)
    try:
        run_work(pin, [mapping.node], engine, threads)
    except BaseException:
        pin.close()
        raise
    return pin
