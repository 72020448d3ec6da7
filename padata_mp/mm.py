"""A simulated machine's memory and the kernel's deferred struct-page init, run in parallel.

``Machine.create`` lays out nodes and zones as on x86-64 and does what early boot does, single
threaded: the low zones and the first section of each node's highest zone get their struct pages
initialised (and stay reserved: the model frees only what deferred init frees); the rest of the
memmap is left poisoned.  ``deferred_init`` then runs one padata job per node, all nodes at once,
with the kernel's parameters, and ``Machine.verify`` proves the result.

The memory model uses the engine; the engine knows nothing of struct pages.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from . import pages as pg
from .errors import PadataError, merge_ranges
from .job import MtJob
from .pool import JobReport, Padata, default_engine
from .shm import BlockOwner, SharedArray
from .topology import memory_nodes, read_topology

log = logging.getLogger("padata_mp.mm")

GiB = 1 << 30
DMA_END_PFN = (16 << 20) // pg.PAGE_SIZE  # ZONE_DMA: the first 16 MiB
DMA32_END_PFN = (4 << 30) // pg.PAGE_SIZE  # ZONE_DMA32: up to 4 GiB
ZONE_LIMITS = ((0, DMA_END_PFN), (DMA_END_PFN, DMA32_END_PFN), (DMA32_END_PFN, 1 << 62))

# Per zone: the free lists (one list head per order) and the counters of struct zone.
ZONE_DTYPE = np.dtype(
    [
        ("free_next", "<u8", (pg.NR_ORDERS,)),
        ("free_prev", "<u8", (pg.NR_ORDERS,)),
        ("nr_free", "<i8", (pg.NR_ORDERS,)),
        ("managed_pages", "<i8"),
    ]
)
# Per section, what deferred init freed there: the first and last head and the count, per order.
FIRST, LAST, COUNT = 0, 1, 2
# A list node's links: words 1 and 2 of a struct page (lru.next, lru.prev), fields of a list head.
NEXT, PREV = 1, 2
LIST_HEAD_FIELD = {NEXT: "free_next", PREV: "free_prev"}


class VerifyError(PadataError):
    """The memmap is not as the kernel leaves it; ``pfn`` and ``field`` name the first fault."""

    def __init__(self, message: str, *, pfn: int | None = None, field: str | None = None):
        super().__init__(message)
        self.pfn = pfn
        self.field = field


@dataclass(frozen=True)
class Zone:
    node: int
    zone: int  # ZONE_DMA, ZONE_DMA32 or ZONE_NORMAL
    start_pfn: int
    end_pfn: int
    first_deferred_pfn: int  # == end_pfn when nothing in the zone is deferred

    @property
    def name(self) -> str:
        return pg.ZONE_NAMES[self.zone]


@dataclass(frozen=True)
class NodeLayout:
    node: int
    start_pfn: int
    end_pfn: int
    zones: tuple[Zone, ...]

    @property
    def highest_zone(self) -> Zone:
        return self.zones[-1]


def parse_size(text: str | int) -> int:
    """Bytes from an int or a string such as ``"512M"``, ``"64G"``, ``"1T"`` (powers of 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
        if not match:
            raise ValueError(
                f"a size is a number with an optional K, M, G or T suffix, like 64G; got {text!r}"
            )
        scale = 1024 ** " KMGT".index(match[2].upper() or " ")
        value = int(float(match[1]) * scale)
    if value < pg.PAGE_SIZE:
        raise ValueError(f"memory must be at least one page ({pg.PAGE_SIZE} bytes), got {text!r}")
    return value


def layout(total_pages: int, nodes: int) -> tuple[NodeLayout, ...]:
    """Nodes splitting memory evenly on section boundaries (the last takes any partial section),
    each holding the parts of DMA, DMA32 and Normal that fall in its pfn range."""
    sections = -(-total_pages // pg.PAGES_PER_SECTION)
    if not isinstance(nodes, int) or nodes < 1 or nodes > sections:
        raise ValueError(f"nodes must be between 1 and the number of sections ({sections}), got {nodes!r}")
    made = []
    for k in range(nodes):
        start = k * sections // nodes * pg.PAGES_PER_SECTION
        end = total_pages if k == nodes - 1 else (k + 1) * sections // nodes * pg.PAGES_PER_SECTION
        spans = [(z, max(start, lo), min(end, hi)) for z, (lo, hi) in enumerate(ZONE_LIMITS)]
        spans = [(z, lo, hi) for z, lo, hi in spans if lo < hi]
        zones = [Zone(k, z, lo, hi, hi) for z, lo, hi in spans[:-1]]
        z, lo, hi = spans[-1]
        zones.append(Zone(k, z, lo, hi, min(_first_deferred(lo), hi)))
        made.append(NodeLayout(k, start, end, tuple(zones)))
    return tuple(made)


def _first_deferred(zone_start: int) -> int:
    """defer_init(): deferral starts at the first section boundary after one section of the
    node's highest zone has been initialised."""
    first = zone_start + pg.PAGES_PER_SECTION
    return -(-first // pg.PAGES_PER_SECTION) * pg.PAGES_PER_SECTION


@dataclass(frozen=True)
class ZoneJob:
    """fn_arg of a node's deferred-init job: what the chunk function needs, by shared handle."""

    memmap: SharedArray
    pageblocks: SharedArray
    records: SharedArray
    node: int
    zone: int
    end_pfn: int
    holes: tuple[tuple[int, int], ...]


def init_chunk(start: int, end: int, job: ZoneJob) -> None:
    """thread_fn of deferred init: initialise and free [start, end), clipped to the zone, holes
    skipped, section by section; record each section's freed heads, linked, for the splice.

    The engine cuts the job on section boundaries (align = PAGES_PER_SECTION); a range that is not
    is refused, since two calls must never share a section's record.
    """
    if start % pg.PAGES_PER_SECTION or (end % pg.PAGES_PER_SECTION and end < job.end_pfn):
        raise ValueError(f"deferred init works in whole sections, got [{start}, {end})")
    raw, pageblocks, records = job.memmap.array, job.pageblocks.array, job.records.array
    flags = pg.page_flags(job.node, job.zone)
    for section in range(start, min(end, job.end_pfn), pg.PAGES_PER_SECTION):
        top = min(section + pg.PAGES_PER_SECTION, job.end_pfn)
        heads: dict[int, list[np.ndarray]] = {0: [], pg.MAX_ORDER: []}  # order -> pfns freed
        for lo, hi in _free_ranges(section, top, job.holes):
            order10, order0 = pg.init_and_free(raw, pageblocks, lo, hi, flags)
            heads[pg.MAX_ORDER].append(order10)
            heads[0].append(order0)
        record_heads(raw, records[section // pg.PAGES_PER_SECTION], heads)


def record_heads(raw: np.ndarray, record: np.ndarray, heads: dict[int, list[np.ndarray]]) -> None:
    """A section's record for the splice: each order's freed heads (pfn arrays, in order) linked into
    one chain, and its FIRST, LAST and COUNT noted; orders with none are zero."""
    record[:] = 0
    for order, parts in heads.items():
        pfns = np.concatenate(parts) if parts else np.empty(0, np.int64)
        if len(pfns):
            pg.link(raw, pfns)
            record[order] = (pfns[0], pfns[-1], len(pfns))


def _free_ranges(start: int, end: int, holes: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) less the holes (sorted, disjoint)."""
    ranges, at = [], start
    for lo, hi in holes:
        if hi <= at or lo >= end:
            continue
        if lo > at:
            ranges.append((at, lo))
        at = max(at, hi)
    if at < end:
        ranges.append((at, end))
    return ranges


class PageUser(Protocol):
    """Something holding pages of the machine off the free lists."""

    def allocated_ranges(self) -> list[tuple[int, int]]: ...


@dataclass
class MachineState:
    raw: np.ndarray
    pageblocks: np.ndarray
    zones: np.ndarray
    users: list[PageUser]
    initialised: bool


@dataclass
class VerifySummary:
    deferred_pages: int
    free_pages: int
    per_node: dict[int, int]
    per_zone: dict[tuple[int, str], int]
    per_order: dict[int, int]


class Machine(BlockOwner):
    """A simulated machine: its layout and, in shared memory, the memmap (one 64-byte struct page
    per 4 KiB page), the pageblock flags, the zones' free lists and counters.

    Use ``Machine.create`` as a context manager: the shared memory is unlinked on exit.  The page
    frames themselves are not allocated; the memmap is what deferred init touches.
    """

    def __init__(
        self,
        total_pages: int,
        nodes: tuple[NodeLayout, ...],
        holes: tuple[tuple[int, int], ...],
        host_nodes: tuple[int, ...] = (0,),
    ):
        self.total_pages = total_pages
        self.nodes = nodes
        self.holes = holes
        # Simulated node k's struct pages live on host node k modulo the host's nodes with memory.
        self.host_node = {n.node: host_nodes[n.node % len(host_nodes)] for n in nodes}
        self.initialised = False
        # What later jobs took off the free lists (huge page pools, mappings), each able to say
        # which pfns it holds: verify() proves everything else deferred is free.
        self.users: list[PageUser] = []
        self._blocks: list[SharedArray] = []
        placement = [
            (n.start_pfn * pg.STRUCT_PAGE_SIZE, n.end_pfn * pg.STRUCT_PAGE_SIZE, self.host_node[n.node])
            for n in nodes
        ]
        try:
            self._raw = self._create((total_pages, 8), np.uint64, placement=placement)
            self._pageblocks = self._create(-(-total_pages // pg.PAGEBLOCK_NR_PAGES), np.uint8)
            self._zones = self._create((len(nodes), pg.MAX_NR_ZONES), ZONE_DTYPE)
            self._records = self._create((-(-total_pages // pg.PAGES_PER_SECTION), pg.NR_ORDERS, 3), np.int64)
        except BaseException:
            self.close()
            raise

    @classmethod
    def create(
        cls,
        mem: str | int,
        nodes: int | str = 1,
        *,
        holes: list[tuple[int, int]] | None = None,
        host_nodes: tuple[int, ...] | None = None,
    ) -> Machine:
        """A machine of ``mem`` bytes (or "512M", "64G", "1T") over ``nodes`` nodes (a count, or
        "auto" for the host's nodes), with optional ``holes``: reserved [start_pfn, end_pfn) ranges
        that deferred init skips.  Simulated node k's struct pages are placed on ``host_nodes[k %
        len(host_nodes)]`` (default: the host's nodes with memory).  Early boot is done; the
        deferred struct pages are poisoned."""
        total_pages = parse_size(mem) // pg.PAGE_SIZE
        host = read_topology()
        if nodes == "auto":
            nodes = max(1, len(host.nodes_with_cpus))
        node_layout = layout(total_pages, nodes)
        host_nodes = host_nodes or tuple(n.id for n in host.nodes if n.mem_bytes) or (0,)
        machine = cls(total_pages, node_layout, _check_holes(holes or [], total_pages), host_nodes)
        try:
            machine._early_boot()
        except BaseException:
            machine.close()
            raise
        return machine

    # -- views ------------------------------------------------------------------------------

    @property
    def memmap(self) -> np.ndarray:
        """The struct pages as a numpy structured array (pages.PAGE_DTYPE), indexed by pfn."""
        return self._raw.array.view(pg.PAGE_DTYPE)[:, 0]

    @property
    def raw(self) -> np.ndarray:
        """The struct pages as (pages, 8) uint64 words."""
        return self._raw.array

    @property
    def pageblocks(self) -> np.ndarray:
        return self._pageblocks.array

    @property
    def zones(self) -> np.ndarray:
        """Per (node, zone): free-list heads, nr_free per order, managed pages."""
        return self._zones.array

    @property
    def memmap_bytes(self) -> int:
        return self.total_pages * pg.STRUCT_PAGE_SIZE

    @property
    def shared_arrays(self) -> tuple[SharedArray, ...]:
        """The shared blocks workers touch, to attach ahead of time (Padata.attach)."""
        return (self._raw, self._pageblocks, self._records)

    def placement(self, samples: int = 16) -> dict[int, tuple[int, float | None]]:
        """Per simulated node: the host node meant to hold its struct pages, and the fraction of
        ``samples`` pages of them found there (move_pages), or None where that cannot be checked."""
        base = self.raw.ctypes.data
        checked = {}
        for node in self.nodes:
            pfns = np.linspace(node.start_pfn, node.end_pfn - 1, samples).astype(np.int64)
            addresses = sorted(
                {(base + int(p) * pg.STRUCT_PAGE_SIZE) // pg.PAGE_SIZE * pg.PAGE_SIZE for p in pfns}
            )
            found = memory_nodes(addresses)
            want = self.host_node[node.node]
            checked[node.node] = (want, None if found is None else sum(f == want for f in found) / len(found))
        return checked

    def deferred_ranges(self) -> list[tuple[Zone, int, int]]:
        """Per node, its highest zone and the pfn range deferred there (holes included)."""
        return [(z, z.first_deferred_pfn, z.end_pfn) for z in (n.highest_zone for n in self.nodes)]

    def deferred_pfns(self) -> np.ndarray:
        """Every pfn left for deferred init: the deferred ranges less the holes."""
        parts = [
            np.arange(lo, hi, dtype=np.int64)
            for _, start, end in self.deferred_ranges()
            for lo, hi in _free_ranges(start, end, self.holes)
        ]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def deferred_count(self, zone: Zone) -> int:
        if zone is not self.nodes[zone.node].highest_zone:
            return 0
        return sum(hi - lo for lo, hi in _free_ranges(zone.first_deferred_pfn, zone.end_pfn, self.holes))

    def init_job(self, zone: Zone, max_threads: int) -> MtJob:
        """The kernel's deferred-init job for a node's highest zone: from the first deferred pfn to
        the zone's end rounded up to a section, align = min_chunk = one section.  ``retry=True``:
        init_chunk rewrites whole sections and the splice comes after, so a re-run is safe."""
        start, end = zone.first_deferred_pfn, zone.end_pfn
        size = -(-end // pg.PAGES_PER_SECTION) * pg.PAGES_PER_SECTION - start if end > start else 0
        return MtJob(
            init_chunk,
            self.zone_job(zone),
            start=start,
            size=size,
            align=pg.PAGES_PER_SECTION,
            min_chunk=pg.PAGES_PER_SECTION,
            max_threads=max_threads,
            retry=True,
        )

    def holes_in_deferred(self, zone: Zone) -> list[tuple[int, int]]:
        """The holes' parts inside the zone's deferred range: early boot initialises them reserved."""
        lo, hi = zone.first_deferred_pfn, zone.end_pfn
        return [(max(a, lo), min(b, hi)) for a, b in self.holes if a < hi and b > lo]

    def zone_job(self, zone: Zone) -> ZoneJob:
        holes = tuple((lo, hi) for lo, hi in self.holes if hi > zone.start_pfn and lo < zone.end_pfn)
        return ZoneJob(self._raw, self._pageblocks, self._records, zone.node, zone.zone, zone.end_pfn, holes)

    def reset(self) -> None:
        """Back to the state right after creation (early boot done, deferred pages poisoned), keeping
        the shared memory and every worker's mapping of it: for repeated runs on one machine."""
        self._early_boot()
        self.initialised = False
        self.users = []

    # -- early boot -------------------------------------------------------------------------

    def _early_boot(self) -> None:
        """Poison the memmap, then initialise what early boot does: every page outside the deferred
        ranges, and the holes inside them, as reserved pages; their pageblocks MOVABLE."""
        raw = self.raw
        pg.poison(raw)
        self.pageblocks.fill(pg.POISON)
        early: list[tuple[Zone, int, int]] = []
        for node in self.nodes:
            for zone in node.zones:
                early.append((zone, zone.start_pfn, zone.first_deferred_pfn))
                early += [(zone, lo, hi) for lo, hi in self.holes_in_deferred(zone)]
        for zone, lo, hi in early:
            if lo < hi:
                pg.init_pages(raw, lo, hi, pg.page_flags(zone.node, zone.zone) | pg.PG_RESERVED)
                first_block = -(-lo // pg.PAGEBLOCK_NR_PAGES)
                self.pageblocks[first_block : -(-hi // pg.PAGEBLOCK_NR_PAGES)] = pg.MIGRATE_MOVABLE
        zones = self.zones
        zones["nr_free"] = 0
        zones["managed_pages"] = 0
        for n in range(len(self.nodes)):
            for z in range(pg.MAX_NR_ZONES):
                heads = [pg.list_head_address(n, z, o) for o in range(pg.NR_ORDERS)]
                zones[n, z]["free_next"] = heads
                zones[n, z]["free_prev"] = heads
        self._records.array.fill(0)

    # -- the free lists ---------------------------------------------------------------------

    def splice(self, zone: Zone) -> None:
        """Add every section's freed blocks to the zone's free lists; count nr_free and managed
        pages."""
        first = zone.first_deferred_pfn // pg.PAGES_PER_SECTION
        last = -(-zone.end_pfn // pg.PAGES_PER_SECTION)
        pages = self.splice_records(zone, self._records.array[first:last])
        self.zones[zone.node, zone.zone]["managed_pages"] += pages

    def splice_records(self, zone: Zone, records: np.ndarray) -> int:
        """Append the chains of freed heads that ``records`` hold (per record and order: FIRST,
        LAST, COUNT, as thread functions leave them) to the zone's free lists, in record order, and
        count nr_free.  Returns the pages added."""
        pages = 0
        for order in range(pg.NR_ORDERS):
            used = records[records[:, order, COUNT] > 0, order]
            if len(used):
                count = int(used[:, COUNT].sum())
                self._append(zone, order, used[:, FIRST], used[:, LAST], count)
                pages += count << order
        return pages

    def _append(self, zone: Zone, order: int, firsts: np.ndarray, lasts: np.ndarray, count: int) -> None:
        """Join the chains [firsts[i] .. lasts[i]] one after the other at the list's tail."""
        raw, entry = self.raw, self.zones[zone.node, zone.zone]
        raw[lasts[:-1], 1] = pg.lru_address(firsts[1:].astype(np.uint64))
        raw[firsts[1:], 2] = pg.lru_address(lasts[:-1].astype(np.uint64))
        tail = int(entry["free_prev"][order])
        raw[firsts[0], 2] = tail
        self._set_link(zone, order, tail, NEXT, pg.lru_address(int(firsts[0])))
        raw[lasts[-1], 1] = pg.list_head_address(zone.node, zone.zone, order)
        entry["free_prev"][order] = pg.lru_address(int(lasts[-1]))
        entry["nr_free"][order] += count

    def _set_link(self, zone: Zone, order: int, address: int, word: int, value: int) -> None:
        """Set a link (``word`` NEXT or PREV) of the list node at ``address``: the list head in
        struct zone, or a block's lru in its struct page."""
        if address == pg.list_head_address(zone.node, zone.zone, order):
            self.zones[zone.node, zone.zone][LIST_HEAD_FIELD[word]][order] = value
        else:
            self.raw[int(pg.lru_pfn(np.uint64(address))), word] = value

    def free_heads(self, zone: Zone, order: int) -> np.ndarray:
        """Pfns of the zone's free blocks of ``order``, found by their heads' struct pages.  Only
        pfns aligned to the order can be heads, so order 10 reads one struct page in 1024 (order 0
        reads them all)."""
        step = 1 << order
        lo = -(-zone.first_deferred_pfn // step) * step
        words = self.raw[lo : zone.end_pfn : step]
        is_head = (words[:, 6] == np.uint64(pg.BUDDY_COUNTS)) & (words[:, 5] == np.uint64(order))
        return np.flatnonzero(is_head).astype(np.int64) * step + lo

    def relink(self, zone: Zone, order: int, heads: np.ndarray) -> None:
        """Make the zone's free list for ``order`` hold exactly ``heads``, linked in pfn order, with
        nr_free to match: for a coordinator that took blocks off the list or added some."""
        entry, head = self.zones[zone.node, zone.zone], pg.list_head_address(zone.node, zone.zone, order)
        entry["free_next"][order] = entry["free_prev"][order] = head
        entry["nr_free"][order] = 0
        heads = np.sort(np.asarray(heads, np.int64))
        if len(heads):
            pg.link(self.raw, heads)
            self._append(zone, order, heads[:1], heads[-1:], len(heads))

    def list_del(self, zone: Zone, order: int, pfn: int) -> None:
        """Take the free block at ``pfn`` off its list, as del_page_from_free_list(); its head keeps
        its buddy mark for the caller to change."""
        raw = self.raw
        nxt, prv = int(raw[pfn, NEXT]), int(raw[pfn, PREV])
        self._set_link(zone, order, prv, NEXT, nxt)
        self._set_link(zone, order, nxt, PREV, prv)
        raw[pfn, 1] = raw[pfn, 2] = pg.lru_address(pfn)
        self.zones[zone.node, zone.zone]["nr_free"][order] -= 1

    @property
    def allocated(self) -> list[tuple[int, int]]:
        """The pfn ranges the users hold, merged."""
        return merge_ranges([r for user in self.users for r in user.allocated_ranges()])

    def save_state(self) -> MachineState:
        """A copy of everything the kernel jobs change, in this process's memory (the memmap's
        size): for benchmarks that repeat a job from the same starting state."""
        return MachineState(
            self.raw.copy(), self.pageblocks.copy(), self.zones.copy(), list(self.users), self.initialised
        )

    def restore_state(self, state: MachineState) -> None:
        for start in range(0, self.total_pages, pg.PIECE_PAGES):  # in pieces: Ctrl-C is seen between
            self.raw[start : start + pg.PIECE_PAGES] = state.raw[start : start + pg.PIECE_PAGES]
        self.pageblocks[:], self.zones[:] = state.pageblocks, state.zones
        self.users, self.initialised = list(state.users), state.initialised

    def free_ranges(self, zone: Zone) -> list[tuple[int, int]]:
        """The zone's deferred pfns that should be free now: less the holes and what later jobs
        allocated."""
        return _free_ranges(
            zone.first_deferred_pfn, zone.end_pfn, merge_ranges([*self.holes, *self.allocated])
        )

    def splice_all(self) -> None:
        """Splice every node's freed sections and mark deferred init done: for runs that freed the
        pages some other way than deferred_init (the benchmark's plain loop, peers, native code)."""
        for zone, _, _ in self.deferred_ranges():
            self.splice(zone)
        self.initialised = True

    # -- proof ------------------------------------------------------------------------------

    def verify(self) -> VerifySummary:
        """Prove deferred init left every struct page, free list and counter as the kernel does;
        raise VerifyError naming the first bad pfn and field.  See mm_verify for the checks."""
        from .mm_verify import verify

        return verify(self)

    def describe(self) -> str:
        """One line per node: its zones' pfn ranges and how many pages are deferred."""
        lines = []
        for node in self.nodes:
            zones = ", ".join(f"{z.name} {z.start_pfn:#x}-{z.end_pfn:#x}" for z in node.zones)
            zone = node.highest_zone
            deferred = self.deferred_count(zone)
            lines.append(f"node {node.node}: {zones}; {deferred} pages deferred")
        return "\n".join(lines)


def _check_holes(holes: list[tuple[int, int]], total_pages: int) -> tuple[tuple[int, int], ...]:
    checked = []
    for hole in holes:
        try:
            lo, hi = (int(x) for x in hole)
        except (TypeError, ValueError):
            raise ValueError(f"a hole is a (start_pfn, end_pfn) pair, got {hole!r}") from None
        if not 0 <= lo < hi <= total_pages:
            raise ValueError(f"hole {hole!r} must satisfy 0 <= start < end <= {total_pages} (the pages)")
        checked.append((lo, hi))
    checked.sort()
    for (_, a_end), (b_start, _) in itertools.pairwise(checked):
        if b_start < a_end:
            raise ValueError(f"holes overlap: {checked}")
    return tuple(checked)


class NodeWork(Protocol):
    """A memory-proportional job of the simulated machine, run as one padata job per node, as the
    kernel runs deferred init: what deferred_init, the other kernel jobs and the benchmark share.

    ``begin`` does the coordinator's part before the jobs (checks, taking blocks off the free
    lists) and returns each simulated node's job; ``end(node)`` does its part after that node's job
    (splicing what the chunks freed into the zone's lists).  Both count in the work's time.
    ``verify`` proves the result.  ``pages`` is the work's size in pages and ``bytes_per_page``
    what it writes per page, for rates.  Going back to the starting state, to run again, is each
    work's own business (Machine.reset or save_state/restore_state, a device's or file's reset)."""

    pages: int
    bytes_per_page: int

    def begin(self, threads: dict[int, int]) -> dict[int, MtJob]: ...

    def end(self, node: int) -> None: ...

    def verify(self) -> object: ...


@dataclass
class NodeRun:
    """What a NodeWork run did: per node, milliseconds (its job and its ``end``) and the job's
    report; ``elapsed_ms`` from ``begin`` to the last ``end``, the kernel's "slowest node" figure."""

    node_ms: dict[int, float]
    reports: dict[int, JobReport] = field(default_factory=dict)
    elapsed_ms: float = 0.0
    pages: int = 0
    retried: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # re-run after a helper died


def node_threads(engine: Padata, nodes: int, threads: int | None) -> dict[int, int]:
    """Per simulated node, its job's max_threads: ``threads``, or the CPUs of the engine node that
    hosts it (simulated node k on engine node k modulo the engine's nodes)."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    hosts = engine.topology.nodes_with_cpus
    return {k: threads or len(hosts[k % len(hosts)].cpus) for k in range(nodes)}


def run_work(work: NodeWork, nodes: int, engine: Padata | None = None, threads: int | None = None) -> NodeRun:
    """Run ``work`` on ``engine``: every node's job at once, each with its helpers (and its
    caller) on the engine node hosting it.  Raises the first node's error once every node has
    stopped."""
    engine = engine or default_engine()
    hosts = engine.topology.nodes_with_cpus
    began = time.perf_counter()
    jobs = work.begin(node_threads(engine, nodes, threads))
    # A numa_aware job spreads its own helpers over the nodes; others stay on their host node.
    futures = {
        node: engine.submit(
            job, node=None if job.numa_aware or len(hosts) == 1 else hosts[node % len(hosts)].id
        )
        for node, job in jobs.items()
    }
    concurrent.futures.wait(futures.values())
    for future in futures.values():
        future.result()  # the first node's error, once every node has stopped
    run = NodeRun({}, pages=work.pages)
    for node, future in futures.items():
        report = future.result()
        ended = time.perf_counter()
        work.end(node)
        run.reports[node] = report
        if report.retried:
            run.retried[node] = report.retried
            log.warning("node %d: a helper died; re-ran %s", node, report.retried)
        run.node_ms[node] = (report.elapsed_s + time.perf_counter() - ended) * 1e3
    run.elapsed_ms = (time.perf_counter() - began) * 1e3
    return run


class DeferredInitWork:
    """Deferred init as a NodeWork: one job per node's highest zone, the splice after it."""

    bytes_per_page = pg.STRUCT_PAGE_SIZE

    def __init__(self, machine: Machine):
        self.machine = machine
        self.pages = sum(machine.deferred_count(z) for z, _, _ in machine.deferred_ranges())

    def begin(self, threads: dict[int, int]) -> dict[int, MtJob]:
        if self.machine.initialised:
            raise PadataError("deferred init has already run on this machine")
        return {
            z.node: self.machine.init_job(z, threads[z.node]) for z, _, _ in self.machine.deferred_ranges()
        }

    def end(self, node: int) -> None:
        self.machine.splice(self.machine.nodes[node].highest_zone)
        self.machine.initialised = True

    def verify(self) -> VerifySummary:
        return self.machine.verify()


def deferred_init(machine: Machine, engine: Padata | None = None, threads: int | None = None) -> NodeRun:
    """The kernel's deferred struct-page init: one job per node, all nodes at once.

    Each job has the kernel's parameters: align = min_chunk = one section, max_threads = the CPUs
    of the engine node that hosts the simulated node (or ``threads``), helpers on that node.  The
    result's ``node_ms`` holds each node's time; ``elapsed_ms`` the whole, the kernel's figure.
    Logs "node %d deferred pages initialised in %ums" per node.
    """
    run = run_work(DeferredInitWork(machine), len(machine.nodes), engine, threads)
    for node, ms in run.node_ms.items():
        log.info("node %d deferred pages initialised in %ums", node, round(ms))
    return run
