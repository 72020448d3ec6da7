"""The proof's checks: struct pages word by word, free lists as rings, blocks against free memory.

``Machine.verify`` runs them over a whole machine; the other jobs' verifiers (huge pages, device
pages, mappings) use ``compare_words`` for the pages they hold.  Every check is vectorised and
works on blocks of ``VERIFY_BLOCK`` pages, so a proof runs after every benchmark, even on a 1 TiB
machine, with little memory of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PadataError
from ..ranges import Ranges
from . import pages as pg
from .buddy import NEXT, PREV

VERIFY_BLOCK = 1 << 20  # pages checked at once
WORDS = ("flags", "lru_next", "lru_prev", "mapping", "index", "private", "mapcount/refcount", "memcg_data")


class VerifyError(PadataError):
    """The memory is not as the kernel leaves it; ``pfn`` and ``field`` name the first fault."""

    def __init__(self, message: str, *, pfn: int | None = None, field: str | None = None):
        super().__init__(message)
        self.pfn = pfn
        self.field = field


@dataclass
class VerifySummary:
    """What a proof counted: pages deferred, pages found free, and free blocks per order."""

    deferred_pages: int
    free_pages: int
    per_order: dict[int, int]


def blocks_of(lo: int, hi: int) -> list[tuple[int, int]]:
    """[lo, hi) in pieces of at most VERIFY_BLOCK pages."""
    return [(start, min(start + VERIFY_BLOCK, hi)) for start in range(lo, hi, VERIFY_BLOCK)]


def check_reserved(raw: np.ndarray, lo: int, hi: int, flags: int) -> None:
    """[lo, hi) are reserved pages as early boot leaves them, untouched since."""
    for start, end in blocks_of(lo, hi):
        self_lru = pg.lru_address(np.arange(start, end, dtype=np.uint64))
        expect = (flags, self_lru, self_lru, 0, 0, 0, pg.INIT_COUNTS, 0)
        compare_words(raw[start:end], start, expect, "a reserved page")


def check_free_pages(raw: np.ndarray, free: Ranges, flags: int) -> tuple[np.ndarray, np.ndarray]:
    """Every struct page of ``free`` as __init_single_page then __free_pages_core leave it; returns
    the pfns of buddy heads and their orders."""
    heads, orders = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for lo, hi in free:
        for start, end in blocks_of(lo, hi):
            words = raw[start:end]
            is_head = words[:, 6] == np.uint64(pg.BUDDY_COUNTS)
            self_lru = pg.lru_address(np.arange(start, end, dtype=np.uint64))
            # Heads: their lru is in a free list (checked there) and private holds the order.
            lru_next = np.where(is_head, words[:, NEXT], self_lru)
            lru_prev = np.where(is_head, words[:, PREV], self_lru)
            private = np.where(is_head, np.minimum(words[:, 5], np.uint64(pg.MAX_ORDER)), np.uint64(0))
            counts = np.where(is_head, np.uint64(pg.BUDDY_COUNTS), np.uint64(pg.FREE_COUNTS))
            compare_words(words, start, (flags, lru_next, lru_prev, 0, 0, private, counts, 0), "a free page")
            heads.append(np.flatnonzero(is_head) + start)
            orders.append(words[is_head, 5].astype(np.int64))
    return np.concatenate(heads), np.concatenate(orders)


def compare_words(words: np.ndarray, pfns: int | np.ndarray, expect: tuple, what: str) -> None:
    """Raise VerifyError at the first struct page whose word differs from ``expect`` (a scalar or
    an array per word).  ``pfns``: the pfn of each row of ``words``, or the first of consecutive
    rows; ``what`` names the kind of page that should have the expected words."""
    first_bad, bad_word = None, None
    for w, value in enumerate(expect):
        wrong = np.flatnonzero(words[:, w] != np.asarray(value, dtype=np.uint64))
        if len(wrong) and (first_bad is None or wrong[0] < first_bad):
            first_bad, bad_word = int(wrong[0]), w
    if first_bad is not None and bad_word is not None:
        pfn = int(pfns[first_bad]) if isinstance(pfns, np.ndarray) else pfns + first_bad
        got = int(words[first_bad, bad_word])
        want = int(np.broadcast_to(np.asarray(expect[bad_word], dtype=np.uint64), (len(words),))[first_bad])
        raise VerifyError(
            f"pfn {pfn}: {WORDS[bad_word]} is {got:#x}, {what} has {want:#x}", pfn=pfn, field=WORDS[bad_word]
        )


def check_list(
    raw: np.ndarray, zones: np.ndarray, node: int, zone: int, order: int, members: np.ndarray
) -> None:
    """The free list of ``(node, zone)`` for ``order`` is one well-formed circular list of exactly
    ``members``: next and prev agree, every head is aligned to its order, nr_free counts them.  An
    empty list's head points to itself both ways."""
    where = f"node {node} {pg.ZONE_NAMES[zone]} order {order}"
    entry = zones[node, zone]
    head = pg.list_head_address(node, zone, order)
    nr_free = int(entry["nr_free"][order])
    if nr_free != len(members):
        raise VerifyError(f"{where}: nr_free {nr_free}, {len(members)} heads found")
    if not len(members):
        if entry["free_next"][order] != head or entry["free_prev"][order] != head:
            raise VerifyError(f"{where}: the empty list's head does not point to itself", field="lru")
        return
    misaligned = members[members % (1 << order) != 0]
    if len(misaligned):
        raise VerifyError(
            f"pfn {misaligned[0]}: head of an order-{order} block is not aligned",
            pfn=int(misaligned[0]),
            field="private",
        )
    # Nodes of the ring: 0 is the list head, i + 1 is members[i].
    address = np.concatenate([[np.uint64(head)], pg.lru_address(members.astype(np.uint64))])
    nexts = np.concatenate([[entry["free_next"][order]], raw[members, NEXT]])
    prevs = np.concatenate([[entry["free_prev"][order]], raw[members, PREV]])
    order_of = np.argsort(address)
    succ = _index_of(address, order_of, nexts)
    pred = _index_of(address, order_of, prevs)
    bad = np.flatnonzero((succ < 0) | (pred < 0))
    if not len(bad):
        bad = np.flatnonzero(pred[succ] != np.arange(len(succ)))
    if len(bad):
        at = int(bad[0])
        pfn = int(members[at - 1]) if at else None
        raise VerifyError(
            f"{where}: broken list link at " + (f"pfn {pfn}" if pfn is not None else "the list head"),
            pfn=pfn,
            field="lru",
        )
    if not _single_ring(succ):
        raise VerifyError(f"{where}: the free list is not one ring")


def _index_of(address: np.ndarray, order_of: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Ring index of each target address, -1 where it is not in the ring."""
    sorted_addresses = address[order_of]
    pos = np.searchsorted(sorted_addresses, targets)
    pos = np.minimum(pos, len(sorted_addresses) - 1)
    found = sorted_addresses[pos] == targets
    return np.where(found, order_of[pos], -1)


def _single_ring(succ: np.ndarray) -> bool:
    """True if following succ from 0 visits every index: pointer doubling, log2(n) vector steps."""
    reached = np.zeros(len(succ), bool)
    reached[0] = True
    frontier, jump = np.array([0]), succ.copy()
    while True:
        frontier = np.union1d(frontier, jump[frontier])
        if reached[frontier].all():
            break
        reached[frontier] = True
        jump = jump[jump]
    return bool(reached.all())


def check_inside(blocks: np.ndarray, free: Ranges, where: str) -> None:
    """Every block ``(start, end)`` lies inside one of the ``free`` ranges."""
    if not len(blocks):
        return
    starts = np.array([lo for lo, _ in free], np.int64)
    ends = np.array([hi for _, hi in free], np.int64)
    which = np.searchsorted(starts, blocks[:, 0], side="right") - 1
    outside = (which < 0) | (blocks[:, 1] > ends[np.maximum(which, 0)])
    if outside.any():
        pfn = int(blocks[outside][0, 0])
        raise VerifyError(
            f"pfn {pfn}: free block runs outside {where}'s free memory", pfn=pfn, field="private"
        )


def check_no_overlap(blocks: np.ndarray) -> None:
    """No two blocks ``(start, end)`` share a page."""
    ordered = blocks[np.argsort(blocks[:, 0])]
    overlap = np.flatnonzero(ordered[1:, 0] < ordered[:-1, 1])
    if len(overlap):
        pfn = int(ordered[overlap[0] + 1, 0])
        raise VerifyError(f"pfn {pfn}: free block overlaps the one before it", pfn=pfn, field="private")


def check_pageblocks(pageblocks: np.ndarray) -> None:
    """Every pageblock is MOVABLE, as the kernel marks freed and early memory."""
    bad = np.flatnonzero(pageblocks != pg.MIGRATE_MOVABLE)
    if len(bad):
        pfn = int(bad[0]) * pg.PAGEBLOCK_NR_PAGES
        raise VerifyError(f"pageblock at pfn {pfn} is not MOVABLE", pfn=pfn, field="pageblock")
