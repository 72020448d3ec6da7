"""The x86-64 struct page and what the kernel's deferred init does to a range of them.

The memmap is held as 8 little-endian uint64 words per page, so each pass of the numpy work is one
strided store per field over a tile small enough to stay in cache (kernel.md section 4):

    word 0 flags | 1 lru.next | 2 lru.prev | 3 mapping | 4 index | 5 private |
    6 _mapcount (low 32 bits) and _refcount (high 32 bits) | 7 memcg_data
"""

from __future__ import annotations

import functools
from typing import Any, overload

import numpy as np

from ..ranges import ceil_div, roundup

PAGE_SIZE = 4096
STRUCT_PAGE_SIZE = 64
PAGES_PER_SECTION = 32768  # 128 MiB: deferred init's align and min_chunk
PAGEBLOCK_NR_PAGES = 512
MAX_ORDER = 10
MAX_ORDER_NR_PAGES = 1 << MAX_ORDER
NR_ORDERS = MAX_ORDER + 1

ZONE_DMA, ZONE_DMA32, ZONE_NORMAL = 0, 1, 2
ZONE_NAMES = ("DMA", "DMA32", "Normal")
MAX_NR_ZONES = len(ZONE_NAMES)  # the zones with free lists in this model
ZONE_DEVICE = 4  # after ZONE_MOVABLE (3), as on x86-64 with CONFIG_ZONE_DEVICE
MIGRATE_MOVABLE = 1
POISON = 0xFF  # CONFIG_DEBUG_VM poisons the memmap: every byte 0xff until a struct page is initialised

# page->flags: node and zone ids in the top bits (SPARSEMEM_VMEMMAP: no section field), then
# last_cpupid, page flags at the bottom.
NODES_WIDTH, ZONES_WIDTH, LAST_CPUPID_WIDTH = 10, 3, 21
NODES_PGSHIFT = 64 - NODES_WIDTH
ZONES_PGSHIFT = NODES_PGSHIFT - ZONES_WIDTH
LAST_CPUPID_PGSHIFT = ZONES_PGSHIFT - LAST_CPUPID_WIDTH
LAST_CPUPID_MASK = (1 << LAST_CPUPID_WIDTH) - 1
PG_RESERVED = 1 << 13
PG_UPTODATE = 1 << 3
PG_HEAD = 1 << 6
TAIL_MAPPING = 0xDEAD_0000_0000_0400  # page->mapping of a compound tail (POISON_POINTER_DELTA + 0x400)

# _mapcount doubles as page_type: a free block's head has PG_buddy cleared from -1.
PG_BUDDY = 0x80
MAPCOUNT_NONE = -1
MAPCOUNT_BUDDY = -1 & ~PG_BUDDY  # -129

# Virtual addresses: the memmap at the kernel's vmemmap base; free-list heads in struct zone.
VMEMMAP_BASE = 0xFFFF_EA00_0000_0000
LRU_OFFSET = 8
ZONE_LISTS_BASE = 0xFFFF_FFFF_8200_0000
LIST_HEAD_SIZE = 16

PAGE_DTYPE = np.dtype(
    [
        ("flags", "<u8"),
        ("lru_next", "<u8"),
        ("lru_prev", "<u8"),
        ("mapping", "<u8"),
        ("index", "<u8"),
        ("private", "<u8"),
        ("mapcount", "<i4"),
        ("refcount", "<i4"),
        ("memcg_data", "<u8"),
    ]
)
assert PAGE_DTYPE.itemsize == STRUCT_PAGE_SIZE

# Pages per tile: 4096 struct pages are 256 KiB, so a tile and its template fit in a 512 KiB L2.
TILE = 4096
PIECE_PAGES = 1 << 22  # 256 MiB of struct pages: long whole-memmap passes go in pieces of this


def page_flags(node: int, zone: int) -> int:
    """page->flags as __init_single_page leaves it: zone and node ids, last_cpupid all ones."""
    return (node << NODES_PGSHIFT) | (zone << ZONES_PGSHIFT) | (LAST_CPUPID_MASK << LAST_CPUPID_PGSHIFT)


def counts_word(mapcount: int, refcount: int) -> int:
    """Word 6: _mapcount in the low half, _refcount in the high half."""
    return ((refcount & 0xFFFF_FFFF) << 32) | (mapcount & 0xFFFF_FFFF)


@overload
def lru_address(pfn: int) -> int: ...
@overload
def lru_address(pfn: np.ndarray) -> np.ndarray: ...
def lru_address(pfn: np.ndarray | int) -> np.ndarray | int:
    """&page->lru for ``pfn``: where list pointers to the page point."""
    return VMEMMAP_BASE + pfn * STRUCT_PAGE_SIZE + LRU_OFFSET


def lru_pfn(address: Any) -> Any:
    """The pfn whose lru lives at ``address`` (inverse of lru_address)."""
    return (address - np.uint64(VMEMMAP_BASE + LRU_OFFSET)) // np.uint64(STRUCT_PAGE_SIZE)


def list_head_address(node: int, zone: int, order: int) -> int:
    """&zone->free_area[order].free_list[MIGRATE_MOVABLE]."""
    return ZONE_LISTS_BASE + ((node * MAX_NR_ZONES + zone) * NR_ORDERS + order) * LIST_HEAD_SIZE


def page_address(pfn: np.ndarray | int) -> np.ndarray | int:
    """The struct page's own address (what compound_head and pointers to pages hold)."""
    return VMEMMAP_BASE + pfn * STRUCT_PAGE_SIZE


INIT_COUNTS = counts_word(MAPCOUNT_NONE, 1)
FREE_COUNTS = counts_word(MAPCOUNT_NONE, 0)
BUDDY_COUNTS = counts_word(MAPCOUNT_BUDDY, 0)


def init_pages(
    raw: np.ndarray, start: int, end: int, flags: int, counts: int = INIT_COUNTS, mapping: int = 0
) -> None:
    """__init_single_page for every pfn in [start, end): zeroed, flags set, refcount 1, mapcount -1,
    lru pointing to itself.  ``raw`` is the memmap as (pages, 8) uint64.  ``counts`` and
    ``mapping`` let other states reuse it: reserved pages, freed pages, mapped anonymous pages."""
    template = _template(flags, counts, mapping)
    for tile in range(start, end, TILE):
        _init_tile(raw[tile : min(tile + TILE, end)], tile, template)


def _init_tile(tile: np.ndarray, first_pfn: int, template: np.ndarray) -> None:
    # One contiguous copy of a template tile (the struct pages of pfns 0..TILE-1), then the lru
    # words moved to this tile's pfns: each strided numpy pass costs about a third of the copy.
    tile[:] = template if len(tile) == TILE else template[: len(tile)]
    lru = tile[:, 1]
    np.add(lru, np.uint64(first_pfn * STRUCT_PAGE_SIZE), out=lru)
    tile[:, 2] = lru


@functools.cache
def _template(flags: int, counts: int, mapping: int = 0) -> np.ndarray:
    template = np.zeros((TILE, 8), np.uint64)
    template[:, 0] = flags
    template[:, 1] = lru_address(np.arange(TILE, dtype=np.uint64))
    template[:, 2] = template[:, 1]
    template[:, 3] = mapping
    template[:, 6] = counts
    return template


def init_and_free(raw: np.ndarray, pageblocks: np.ndarray, start: int, end: int, flags: int) -> tuple:
    """Deferred init of the free pfns [start, end): per tile, initialise every struct page, then free
    the tile while it is in cache.  A full, MAX_ORDER-aligned piece is freed as one order-10 block;
    the pages of a partial piece one by one at order 0.  Pageblocks become MOVABLE.

    Returns the heads freed, ``(order10_pfns, order0_pfns)``, in pfn order, not yet linked.
    """
    template = _template(flags, INIT_COUNTS)
    # Whole pieces end with every refcount 0: __init_single_page's 1 and __free_pages_core's 0 are
    # one template's word, written once (the kernel's two loops keep the tile in cache for this).
    freed = _template(flags, FREE_COUNTS)
    full_lo = roundup(start, MAX_ORDER_NR_PAGES)
    full_hi = end // MAX_ORDER_NR_PAGES * MAX_ORDER_NR_PAGES
    if full_lo >= full_hi:  # no whole piece: every page is freed alone
        full_lo = full_hi = end
    for first in range(full_lo, full_hi, TILE):
        _init_tile(raw[first : min(first + TILE, full_hi)], first, freed)
    _mark_blocks(raw, pageblocks, full_lo, full_hi)
    singles = [np.arange(lo, hi, dtype=np.int64) for lo, hi in ((start, full_lo), (full_hi, end)) if lo < hi]
    for pfns in singles:  # under a piece each, so one tile
        lo, hi = int(pfns[0]), int(pfns[-1]) + 1
        _init_tile(raw[lo:hi], lo, template)
        _free_singles(raw[lo:hi], pageblocks, lo, hi)
    heads10 = np.arange(full_lo, full_hi, MAX_ORDER_NR_PAGES, dtype=np.int64)
    order0 = np.concatenate(singles) if singles else np.empty(0, np.int64)
    return heads10, order0


def _mark_blocks(raw: np.ndarray, pageblocks: np.ndarray, start: int, end: int) -> None:
    """The rest of freeing order-10 blocks: each head marked buddy with its order in private, every
    pageblock MOVABLE.  Once per range rather than per tile: it touches one line per 1024 pages."""
    heads = raw[start:end:MAX_ORDER_NR_PAGES]
    heads[:, 6] = BUDDY_COUNTS
    heads[:, 5] = MAX_ORDER
    pageblocks[start // PAGEBLOCK_NR_PAGES : end // PAGEBLOCK_NR_PAGES] = MIGRATE_MOVABLE


def _free_singles(tile: np.ndarray, pageblocks: np.ndarray, start: int, end: int) -> None:
    """Pages freed one by one at order 0: each its own buddy head; MOVABLE set at each
    pageblock-aligned pfn."""
    tile[:, 6] = BUDDY_COUNTS
    first_block = ceil_div(start, PAGEBLOCK_NR_PAGES)
    last_block = ceil_div(end, PAGEBLOCK_NR_PAGES)
    pageblocks[first_block:last_block] = MIGRATE_MOVABLE


def poison(raw: np.ndarray) -> None:
    """Every byte of the struct pages 0xff, in pieces: Ctrl-C is seen between them."""
    for start in range(0, len(raw), PIECE_PAGES):
        raw[start : start + PIECE_PAGES].view(np.uint8).fill(POISON)


def fill_pages(raw: np.ndarray, start: int, end: int, words: tuple[int, ...]) -> None:
    """Every struct page of [start, end) set to the same 8 ``words``: one contiguous copy of a
    constant tile per tile (a broadcast row store runs at a third of the speed)."""
    tile = _constant_tile(words)
    for lo in range(start, end, TILE):
        hi = min(lo + TILE, end)
        raw[lo:hi] = tile[: hi - lo]


@functools.cache
def _constant_tile(words: tuple[int, ...]) -> np.ndarray:
    return np.tile(np.array(words, np.uint64), (TILE, 1))


def merge_buddies(blocks: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """The buddy allocator's merging, vectorised: ``blocks`` maps order to the pfns of free blocks
    of that order (disjoint); every pair of buddies (pfn ^ 1 << order) joins into one block of the
    next order, up to MAX_ORDER.  Returns the free blocks by order after every merge, sorted."""
    out: dict[int, np.ndarray] = {}
    carry = np.empty(0, np.int64)
    for order in range(NR_ORDERS):
        heads = np.sort(np.concatenate([np.asarray(blocks.get(order, []), np.int64), carry]))
        if order == MAX_ORDER:
            out[order] = heads
            break
        size = 1 << order
        lower = heads[(heads & size) == 0]
        paired = np.isin(lower + size, heads, assume_unique=True)
        merged = lower[paired]
        keep = ~np.isin(heads, np.concatenate([merged, merged + size]), assume_unique=True)
        out[order] = heads[keep]
        carry = merged
    return out


def prep_compound(raw: np.ndarray, heads: np.ndarray, order: int, flags: int) -> None:
    """prep_compound_page() for the huge pages at ``heads`` (sorted pfns, aligned to ``order``):
    every tail pointing at its head (compound_head, bit 0 set) with TAIL_MAPPING; each head
    PG_head; the order in the first tail's flags (folio->_flags_1).  Refcounts stay 0, as hugetlb
    keeps pages in its free pool.  Contiguous huge pages are done a tile at a time."""
    size = 1 << order
    template = _compound_template(flags, order)
    for run in np.split(heads, np.flatnonzero(np.diff(heads) != size) + 1):
        start, end = int(run[0]), int(run[-1]) + size
        for lo in range(start, end, TILE):  # a tile never straddles a huge page: both are aligned
            tile = raw[lo : min(lo + TILE, end)]
            tile[:] = template[: len(tile)]
            # Word 1 of the template points at the head of each page as if the tile began at pfn
            # 0, word 2 at the page itself: both move by the tile's place.
            compound, lru_prev = tile[:, 1], tile[:, 2]
            np.add(compound, np.uint64((lo >> order << order) * STRUCT_PAGE_SIZE), out=compound)
            np.add(lru_prev, np.uint64(lo * STRUCT_PAGE_SIZE), out=lru_prev)
        head_pages, first_tails = raw[start:end:size], raw[start + 1 : end : size]
        head_pages[:, 0] = flags | PG_HEAD
        head_pages[:, 1] = lru_address(run.astype(np.uint64))
        head_pages[:, 3] = 0
        first_tails[:, 0] = flags | order


@functools.cache
def _compound_template(flags: int, order: int) -> np.ndarray:
    template = _template(flags, FREE_COUNTS, TAIL_MAPPING).copy()
    index = np.arange(TILE, dtype=np.uint64)
    template[:, 1] = page_address(index >> np.uint64(order) << np.uint64(order)) + np.uint64(1)
    return template


def link(raw: np.ndarray, heads: np.ndarray) -> None:
    """Chain ``heads`` (pfns, in order) through their lru pointers; the ends are left for a splice."""
    if len(heads) > 1:
        addresses = lru_address(heads.astype(np.uint64))
        raw[heads[:-1], 1] = addresses[1:]
        raw[heads[1:], 2] = addresses[:-1]
