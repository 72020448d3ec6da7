"""A simulated machine: its layout, its memory in shared blocks, early boot, and the proof.

``Machine.create`` lays out nodes and zones as on x86-64 and does what early boot does, single
threaded: the low zones and the first section of each node's highest zone get their struct pages
initialised (and stay reserved: the model frees only what deferred init frees); the rest of the
memmap is left poisoned.  ``Machine.verify`` proves the buddy allocator's side after any job.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..checks import integer
from ..errors import BadTypeError, BadValueError
from ..ranges import Range, Ranges, ceil_div, clip_ranges, merge_ranges, subtract_ranges
from ..shm import BlockOwner, SharedArray
from ..topology import Topology, memory_nodes, read_topology
from . import pages as pg
from .buddy import ZONE_DTYPE, FreeLists
from .layout import NodeLayout, Zone, layout
from .sizes import parse_size
from .verify import (
    VerifyError,
    VerifySummary,
    check_free_pages,
    check_inside,
    check_list,
    check_no_overlap,
    check_pageblocks,
    check_reserved,
)


class PageUser(Protocol):
    """Something holding pages of the machine off the free lists."""

    def allocated_ranges(self) -> Ranges: ...


@dataclass
class MachineState:
    raw: np.ndarray
    pageblocks: np.ndarray
    zones: np.ndarray
    users: list[PageUser]
    initialised: bool


class Machine(BlockOwner):
    """A simulated machine: its layout and, in shared memory, the memmap (one 64-byte struct page
    per 4 KiB page), the pageblock flags, the zones' free lists and counters, and per section the
    record of what a chunk freed there.

    Use ``Machine.create`` as a context manager: the shared memory is unlinked on exit.  The page
    frames themselves are not allocated; the memmap is what deferred init touches.
    """

    def __init__(
        self,
        total_pages: int,
        nodes: tuple[NodeLayout, ...],
        holes: tuple[Range, ...],
        host_nodes: tuple[int, ...] = (0,),
        on_progress: Callable[[str], None] | None = None,
    ):
        super().__init__()
        self.total_pages = total_pages
        self.nodes = nodes
        self.holes = holes
        # Simulated node k's struct pages live on host node k modulo the host's nodes with memory.
        self.host_node = {n.node: host_nodes[n.node % len(host_nodes)] for n in nodes}
        self.initialised = False
        # What later jobs took off the free lists (huge page pools, mappings), each able to say
        # which pfns it holds: verify() proves everything else deferred is free.
        self.users: list[PageUser] = []
        placement = [
            (n.start_pfn * pg.STRUCT_PAGE_SIZE, n.end_pfn * pg.STRUCT_PAGE_SIZE, self.host_node[n.node])
            for n in nodes
        ]
        try:
            gib = total_pages * pg.STRUCT_PAGE_SIZE / 2**30
            shown = (
                None
                if on_progress is None
                else lambda done: on_progress(
                    f"reserving and mapping {gib:.2f} GiB of struct pages {done:.0%}"
                )
            )
            self._raw = self._create((total_pages, 8), np.uint64, placement=placement, on_progress=shown)
            self._pageblocks = self._create(ceil_div(total_pages, pg.PAGEBLOCK_NR_PAGES), np.uint8)
            self._zones = self._create((len(nodes), pg.MAX_NR_ZONES), ZONE_DTYPE)
            sections = ceil_div(total_pages, pg.PAGES_PER_SECTION)
            self._records = self._create((sections, pg.NR_ORDERS, 3), np.int64)
        except BaseException:
            self.close()
            raise
        self.free_lists = FreeLists(self._raw, self._zones)

    @classmethod
    def create(
        cls,
        mem: str | int,
        nodes: int | str = 1,
        *,
        holes: list[Range] | None = None,
        host_nodes: tuple[int, ...] | None = None,
        topology: Topology | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> Machine:
        """A machine of ``mem`` bytes (or "512M", "64G", "1T") over ``nodes`` nodes (a count, or
        "auto" for the nodes with CPUs of ``topology``, by default the host's), with optional
        ``holes``: reserved [start_pfn, end_pfn) ranges that deferred init skips.  Simulated node
        k's struct pages are placed on ``host_nodes[k % len(host_nodes)]`` (default: the host's
        nodes with memory).  Early boot is done; the deferred struct pages are poisoned.
        ``on_progress(what)``: what it is doing, as it goes (the memmap's reserving and mapping,
        by the 256 MiB piece, takes most of the time)."""
        total_pages = parse_size(mem) // pg.PAGE_SIZE
        host = read_topology()
        count = max(1, len((topology or host).nodes_with_cpus)) if nodes == "auto" else nodes
        node_layout = layout(total_pages, integer("nodes", count, 1))
        host_nodes = host_nodes or tuple(n.id for n in host.nodes if n.mem_bytes) or (0,)
        machine = cls(
            total_pages, node_layout, _check_holes(holes or [], total_pages), host_nodes, on_progress
        )
        try:
            if on_progress is not None:
                on_progress("early boot: poisoning the struct pages, initialising the reserved ones")
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
    def records(self) -> np.ndarray:
        """Per section and order: (first, last, count) of the heads a chunk freed there."""
        return self._records.array

    @property
    def shared_arrays(self) -> tuple[SharedArray, ...]:
        """The shared blocks workers touch (memmap, pageblocks, records), to attach ahead of time
        (Padata.attach) and to hand to chunk functions."""
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

    # -- what is where ----------------------------------------------------------------------

    def deferred_ranges(self) -> list[tuple[Zone, int, int]]:
        """Per node, its highest zone and the pfn range deferred there (holes included)."""
        return [(z, z.first_deferred_pfn, z.end_pfn) for z in (n.highest_zone for n in self.nodes)]

    def deferred_free(self, zone: Zone, less: Iterable[Range] = ()) -> Ranges:
        """What deferred init frees in ``zone``: its deferred range less the holes (and ``less``)."""
        if zone is not self.nodes[zone.node].highest_zone:
            return []
        return subtract_ranges((zone.first_deferred_pfn, zone.end_pfn), [*self.holes, *less])

    def deferred_pfns(self) -> np.ndarray:
        """Every pfn left for deferred init: the deferred ranges less the holes."""
        parts = [
            np.arange(lo, hi, dtype=np.int64)
            for z, _, _ in self.deferred_ranges()
            for lo, hi in self.deferred_free(z)
        ]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def deferred_count(self, zone: Zone) -> int:
        return sum(hi - lo for lo, hi in self.deferred_free(zone))

    def reserved_ranges(self, zone: Zone) -> Ranges:
        """What early boot initialises as reserved pages in ``zone``: everything before the first
        deferred pfn, and the holes' parts after it (whichever side of it a hole starts)."""
        early = [(zone.start_pfn, zone.first_deferred_pfn)]
        return merge_ranges(early + clip_ranges(self.holes, zone.first_deferred_pfn, zone.end_pfn))

    @property
    def allocated(self) -> Ranges:
        """The pfn ranges the users hold, merged."""
        return merge_ranges(r for user in self.users for r in user.allocated_ranges())

    def free_ranges(self, zone: Zone) -> Ranges:
        """The zone's pfns that should be free now: what deferred init freed, less what later jobs
        allocated."""
        return self.deferred_free(zone, self.allocated)

    def reset(self) -> None:
        """Back to the state right after creation (early boot done, deferred pages poisoned), keeping
        the shared memory and every worker's mapping of it: for repeated runs on one machine."""
        self._early_boot()
        self.initialised = False
        self.users = []

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

    def describe(self) -> str:
        """One line per node: its zones' pfn ranges and how many pages are deferred."""
        lines = []
        for node in self.nodes:
            zones = ", ".join(f"{z.name} {z.start_pfn:#x}-{z.end_pfn:#x}" for z in node.zones)
            lines.append(
                f"node {node.node}: {zones}; {self.deferred_count(node.highest_zone)} pages deferred"
            )
        return "\n".join(lines)

    # -- early boot -------------------------------------------------------------------------

    def _early_boot(self) -> None:
        """Poison the memmap, then initialise what early boot does as reserved pages (every page
        outside the deferred ranges, and the holes inside them), their pageblocks MOVABLE; every
        free list empty."""
        raw = self.raw
        pg.poison(raw)
        self.pageblocks.fill(pg.POISON)
        for node in self.nodes:
            for zone in node.zones:
                for lo, hi in self.reserved_ranges(zone):
                    pg.init_pages(raw, lo, hi, pg.page_flags(zone.node, zone.zone) | pg.PG_RESERVED)
                    first_block = ceil_div(lo, pg.PAGEBLOCK_NR_PAGES)
                    self.pageblocks[first_block : ceil_div(hi, pg.PAGEBLOCK_NR_PAGES)] = pg.MIGRATE_MOVABLE
        self.free_lists.clear()
        self.records.fill(0)

    # -- proof ------------------------------------------------------------------------------

    def verify(self) -> VerifySummary:
        """Prove the buddy allocator's side as the kernel leaves it after deferred init and any
        later job: every reserved page and hole untouched, every free page initialised and in
        exactly one well-formed list of its zone, every list head of every zone sound (an empty
        list's pointing to itself), counters to match, pageblocks MOVABLE.  Raises VerifyError
        naming the first bad pfn and field.  The pages users hold are proven by their own
        verifiers."""
        if not self.initialised:
            raise VerifyError("deferred init has not run on this machine")
        per_order = dict.fromkeys(range(pg.NR_ORDERS), 0)
        blocks = [np.empty((0, 2), np.int64)]
        deferred_total = free_total = 0
        pages_of = {(z.node, z.zone): z for n in self.nodes for z in n.zones}
        for node, zone_index in itertools.product(range(len(self.nodes)), range(pg.MAX_NR_ZONES)):
            zone = pages_of.get((node, zone_index))
            if zone is None:  # the node has no pages in this zone: its lists must be empty
                heads = orders = np.empty(0, np.int64)
                free, deferred = [], 0
            else:
                flags = pg.page_flags(node, zone_index)
                for lo, hi in self.reserved_ranges(zone):
                    check_reserved(self.raw, lo, hi, flags | pg.PG_RESERVED)
                free, deferred = self.free_ranges(zone), self.deferred_count(zone)
                heads, orders = check_free_pages(self.raw, free, flags)
            free_pages = 0
            for order in range(pg.NR_ORDERS):
                members = heads[orders == order]
                check_list(self.raw, self.zones, node, zone_index, order, members)
                per_order[order] += len(members)
                free_pages += len(members) << order
                blocks.append(np.stack([members, members + (1 << order)], axis=1))
            self._check_counts(node, zone_index, free_pages, sum(hi - lo for lo, hi in free), deferred)
            if zone is not None:
                check_inside(np.concatenate(blocks[-pg.NR_ORDERS :]), free, f"node {node} {zone.name}")
            free_total += free_pages
            deferred_total += deferred
        check_no_overlap(np.concatenate(blocks))
        check_pageblocks(self.pageblocks)
        return VerifySummary(deferred_total, free_total, per_order)

    def _check_counts(self, node: int, zone: int, free_pages: int, expected: int, deferred: int) -> None:
        where = f"node {node} {pg.ZONE_NAMES[zone]}"
        if free_pages != expected:
            raise VerifyError(
                f"{where}: {free_pages} pages free, {deferred} deferred less {deferred - expected} "
                f"allocated is {expected}"
            )
        managed = int(self.zones[node, zone]["managed_pages"])
        if managed != deferred:
            raise VerifyError(f"{where}: managed_pages {managed}, {deferred} deferred pages freed")


def _check_holes(holes: list[Range], total_pages: int) -> tuple[Range, ...]:
    checked = []
    for hole in holes:
        if not isinstance(hole, tuple | list) or len(hole) != 2:
            raise BadTypeError(f"a hole is a (start_pfn, end_pfn) pair, got {hole!r}")
        lo, hi = integer("a hole's start_pfn", hole[0]), integer("a hole's end_pfn", hole[1])
        if not 0 <= lo < hi <= total_pages:
            raise BadValueError(f"hole {hole!r} must satisfy 0 <= start < end <= {total_pages} (the pages)")
        checked.append((lo, hi))
    checked.sort()
    for (_, a_end), (b_start, _) in itertools.pairwise(checked):
        if b_start < a_end:
            raise BadValueError(f"holes overlap: {checked}")
    return tuple(checked)
