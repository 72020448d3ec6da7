"""Where a simulated machine's nodes and zones lie, as on x86-64, and where deferral starts."""

from __future__ import annotations

from dataclasses import dataclass

from ..checks import integer, require
from ..ranges import ceil_div, roundup
from . import pages as pg

DMA_END_PFN = (16 << 20) // pg.PAGE_SIZE  # ZONE_DMA: the first 16 MiB
DMA32_END_PFN = (4 << 30) // pg.PAGE_SIZE  # ZONE_DMA32: up to 4 GiB
ZONE_LIMITS = ((0, DMA_END_PFN), (DMA_END_PFN, DMA32_END_PFN), (DMA32_END_PFN, 1 << 62))


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


def layout(total_pages: int, nodes: int) -> tuple[NodeLayout, ...]:
    """Nodes splitting memory evenly on section boundaries (the last takes any partial section),
    each holding the parts of DMA, DMA32 and Normal that fall in its pfn range."""
    sections = ceil_div(total_pages, pg.PAGES_PER_SECTION)
    nodes = integer("nodes", nodes)
    require(
        1 <= nodes <= sections,
        f"nodes must be between 1 and the number of sections ({sections}), got {nodes}",
    )
    made = []
    for k in range(nodes):
        start = k * sections // nodes * pg.PAGES_PER_SECTION
        end = total_pages if k == nodes - 1 else (k + 1) * sections // nodes * pg.PAGES_PER_SECTION
        spans = [(z, max(start, lo), min(end, hi)) for z, (lo, hi) in enumerate(ZONE_LIMITS)]
        spans = [(z, lo, hi) for z, lo, hi in spans if lo < hi]
        zones = [Zone(k, z, lo, hi, hi) for z, lo, hi in spans[:-1]]
        z, lo, hi = spans[-1]
        zones.append(Zone(k, z, lo, hi, min(first_deferred(lo), hi)))
        made.append(NodeLayout(k, start, end, tuple(zones)))
    return tuple(made)


def first_deferred(zone_start: int) -> int:
    """defer_init(): deferral starts at the first section boundary after one section of the
    node's highest zone has been initialised."""
    return roundup(zone_start + pg.PAGES_PER_SECTION, pg.PAGES_PER_SECTION)
