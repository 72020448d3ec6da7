"""The buddy allocator's free lists: one circular list per zone and order, threaded through the
free blocks' struct pages (lru.next, lru.prev) and anchored at a list head in struct zone.

Addresses are the kernel's: a block's list node is its struct page's lru in the vmemmap, a list
head lives at ``pages.list_head_address(node, zone, order)``.  Chunk functions link the heads they
free into per-section chains (``record_heads``); the coordinator splices the chains into a zone's
lists (``FreeLists.splice_records``), so workers never share a list.
"""

from __future__ import annotations

import numpy as np

from ..ranges import roundup
from ..shm import SharedArray
from . import pages as pg
from .layout import Zone

# Per zone: the free lists (one list head per order) and the counters of struct zone.
ZONE_DTYPE = np.dtype(
    [
        ("free_next", "<u8", (pg.NR_ORDERS,)),
        ("free_prev", "<u8", (pg.NR_ORDERS,)),
        ("nr_free", "<i8", (pg.NR_ORDERS,)),
        ("managed_pages", "<i8"),
    ]
)
# Per section, what a chunk freed there: the first and last head and the count, per order.
FIRST, LAST, COUNT = 0, 1, 2
# A list node's links: words 1 and 2 of a struct page (lru.next, lru.prev), fields of a list head.
NEXT, PREV = 1, 2
LIST_HEAD_FIELD = {NEXT: "free_next", PREV: "free_prev"}


def record_heads(raw: np.ndarray, record: np.ndarray, heads: dict[int, list[np.ndarray]]) -> None:
    """A section's record for the splice: each order's freed heads (pfn arrays, in order) linked into
    one chain, and its FIRST, LAST and COUNT noted; orders with none are zero."""
    record[:] = 0
    for order, parts in heads.items():
        pfns = np.concatenate(parts) if parts else np.empty(0, np.int64)
        if len(pfns):
            pg.link(raw, pfns)
            record[order] = (pfns[0], pfns[-1], len(pfns))


class FreeLists:
    """The free lists and counters of every zone of a machine: ``zones[node, zone]`` (ZONE_DTYPE)
    and the struct pages in ``memmap`` (8 words per page) that the lists run through."""

    def __init__(self, memmap: SharedArray, zones: SharedArray):
        self._memmap, self._zones = memmap, zones

    @property
    def raw(self) -> np.ndarray:
        return self._memmap.array

    @property
    def zones(self) -> np.ndarray:
        return self._zones.array

    def clear(self) -> None:
        """Every list empty (its head pointing to itself), every counter zero."""
        zones = self.zones
        zones["nr_free"] = 0
        zones["managed_pages"] = 0
        nodes, nr_zones = zones.shape
        for n in range(nodes):
            for z in range(nr_zones):
                heads = [pg.list_head_address(n, z, o) for o in range(pg.NR_ORDERS)]
                zones[n, z]["free_next"] = heads
                zones[n, z]["free_prev"] = heads

    def splice_records(self, zone: Zone, records: np.ndarray) -> int:
        """Append the chains of freed heads that ``records`` hold (per record and order: FIRST,
        LAST, COUNT, as chunk functions leave them) to the zone's free lists, in record order, and
        count nr_free.  Returns the pages added."""
        pages = 0
        for order in range(pg.NR_ORDERS):
            used = records[records[:, order, COUNT] > 0, order]
            if len(used):
                count = int(used[:, COUNT].sum())
                self._append(zone, order, used[:, FIRST], used[:, LAST], count)
                pages += count << order
        return pages

    def free_heads(self, zone: Zone, order: int) -> np.ndarray:
        """Pfns of the zone's free blocks of ``order``, found by their heads' struct pages.  Only
        pfns aligned to the order can be heads, so order 10 reads one struct page in 1024 (order 0
        reads them all)."""
        step = 1 << order
        lo = roundup(zone.first_deferred_pfn, step)
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
        raw[pfn, NEXT] = raw[pfn, PREV] = pg.lru_address(pfn)
        self.zones[zone.node, zone.zone]["nr_free"][order] -= 1

    def _append(self, zone: Zone, order: int, firsts: np.ndarray, lasts: np.ndarray, count: int) -> None:
        """Join the chains [firsts[i] .. lasts[i]] one after the other at the list's tail."""
        raw, entry = self.raw, self.zones[zone.node, zone.zone]
        raw[lasts[:-1], NEXT] = pg.lru_address(firsts[1:].astype(np.uint64))
        raw[firsts[1:], PREV] = pg.lru_address(lasts[:-1].astype(np.uint64))
        tail = int(entry["free_prev"][order])
        raw[firsts[0], PREV] = tail
        self._set_link(zone, order, tail, NEXT, pg.lru_address(int(firsts[0])))
        raw[lasts[-1], NEXT] = pg.list_head_address(zone.node, zone.zone, order)
        entry["free_prev"][order] = pg.lru_address(int(lasts[-1]))
        entry["nr_free"][order] += count

    def _set_link(self, zone: Zone, order: int, address: int, word: int, value: int) -> None:
        """Set a link (``word`` NEXT or PREV) of the list node at ``address``: the list head in
        struct zone, or a block's lru in its struct page."""
        if address == pg.list_head_address(zone.node, zone.zone, order):
            self.zones[zone.node, zone.zone][LIST_HEAD_FIELD[word]][order] = value
        else:
            self.raw[int(pg.lru_pfn(np.uint64(address))), word] = value
