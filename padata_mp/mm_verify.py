"""The proof that deferred init lost nothing: every struct page, free list and counter checked.

After later jobs (huge pages, mappings) it proves the buddy allocator's side: every deferred page
not in ``machine.allocated`` is free, in exactly one well-formed list; those jobs' own verifiers
prove the allocated pages.

Vectorised and done in blocks of pages, so it runs after every benchmark, even on a 1 TiB machine,
with little memory of its own.
"""

from __future__ import annotations

import numpy as np

from . import pages as pg
from .mm import Machine, VerifyError, VerifySummary, Zone

BLOCK = 1 << 20  # pages checked at once
WORDS = ("flags", "lru_next", "lru_prev", "mapping", "index", "private", "mapcount/refcount", "memcg_data")


def verify(machine: Machine) -> VerifySummary:
    """Raise VerifyError at the first fault; return counts of what was proven."""
    if not machine.initialised:
        raise VerifyError("deferred init has not run on this machine")
    _check_early_pages(machine)
    per_zone, per_order, per_node, free_total, deferred_total = (
        {},
        dict.fromkeys(range(pg.NR_ORDERS), 0),
        {},
        0,
        0,
    )
    blocks = []
    for zone, _, _ in machine.deferred_ranges():
        free = machine.free_ranges(zone)
        heads, orders = _check_deferred_pages(machine, zone, free)
        free_pages = 0
        for order in range(pg.NR_ORDERS):
            members = heads[orders == order]
            _check_list(machine, zone, order, members)
            per_order[order] += len(members)
            free_pages += len(members) << order
            blocks.append(np.stack([members, members + (1 << order)], axis=1))
        deferred = machine.deferred_count(zone)
        expected = sum(hi - lo for lo, hi in free)
        entry = machine.zones[zone.node, zone.zone]
        if free_pages != expected:
            raise VerifyError(
                f"node {zone.node} {zone.name}: {free_pages} pages free, {deferred} deferred less "
                f"{deferred - expected} allocated is {expected}"
            )
        if int(entry["managed_pages"]) != deferred:
            raise VerifyError(
                f"node {zone.node} {zone.name}: managed_pages {int(entry['managed_pages'])}, "
                f"{deferred} deferred pages freed"
            )
        _check_inside(np.concatenate(blocks[-pg.NR_ORDERS :]), free, zone)
        per_zone[(zone.node, zone.name)] = free_pages
        per_node[zone.node] = free_pages
        free_total += free_pages
        deferred_total += deferred
    _check_no_overlap(np.concatenate(blocks) if blocks else np.empty((0, 2), np.int64))
    _check_other_zones_empty(machine)
    bad = np.flatnonzero(machine.pageblocks != pg.MIGRATE_MOVABLE)
    if len(bad):
        pfn = int(bad[0]) * pg.PAGEBLOCK_NR_PAGES
        raise VerifyError(f"pageblock at pfn {pfn} is not MOVABLE", pfn=pfn, field="pageblock")
    return VerifySummary(deferred_total, free_total, per_node, per_zone, per_order)


def _check_early_pages(machine: Machine) -> None:
    """Pages early boot initialised, and the holes, are reserved pages untouched by deferred init."""
    for node in machine.nodes:
        for zone in node.zones:
            flags = pg.page_flags(zone.node, zone.zone) | pg.PG_RESERVED
            ranges = [(zone.start_pfn, zone.first_deferred_pfn)]
            ranges += [
                (lo, min(hi, zone.end_pfn))
                for lo, hi in machine.holes
                if zone.first_deferred_pfn <= lo < zone.end_pfn
            ]
            for lo, hi in ranges:
                for start in range(lo, hi, BLOCK):
                    end = min(start + BLOCK, hi)
                    words = machine.raw[start:end]
                    pfns = np.arange(start, end, dtype=np.uint64)
                    self_lru = pg.lru_address(pfns)
                    expect = (flags, self_lru, self_lru, 0, 0, 0, pg.INIT_COUNTS, 0)
                    compare_words(words, start, expect, "a reserved page")


def _check_deferred_pages(
    machine: Machine, zone: Zone, free: list[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Every deferred struct page as __init_single_page then __free_pages_core leave it; returns the
    pfns of buddy heads and their orders."""
    flags = pg.page_flags(zone.node, zone.zone)
    heads, orders = [], []
    for lo, hi in free:
        for start in range(lo, hi, BLOCK):
            end = min(start + BLOCK, hi)
            words = machine.raw[start:end]
            is_head = words[:, 6] == np.uint64(pg.BUDDY_COUNTS)
            pfns = np.arange(start, end, dtype=np.uint64)
            self_lru = pg.lru_address(pfns)
            # Heads: their lru is in a free list (checked there) and private holds the order.
            lru_next = np.where(is_head, words[:, 1], self_lru)
            lru_prev = np.where(is_head, words[:, 2], self_lru)
            private = np.where(is_head, np.minimum(words[:, 5], np.uint64(pg.MAX_ORDER)), np.uint64(0))
            counts = np.where(
                is_head,
                np.uint64(pg.BUDDY_COUNTS),
                np.uint64(pg.FREE_COUNTS),
            )
            compare_words(words, start, (flags, lru_next, lru_prev, 0, 0, private, counts, 0), "a free page")
            heads.append(np.flatnonzero(is_head) + start)
            orders.append(words[is_head, 5].astype(np.int64))
    if not heads:
        return np.empty(0, np.int64), np.empty(0, np.int64)
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
    if first_bad is not None:
        pfn = int(pfns[first_bad]) if isinstance(pfns, np.ndarray) else pfns + first_bad
        got = int(words[first_bad, bad_word])
        want = int(np.broadcast_to(np.asarray(expect[bad_word], dtype=np.uint64), (len(words),))[first_bad])
        raise VerifyError(
            f"pfn {pfn}: {WORDS[bad_word]} is {got:#x}, {what} has {want:#x}", pfn=pfn, field=WORDS[bad_word]
        )


def _check_list(machine: Machine, zone: Zone, order: int, members: np.ndarray) -> None:
    """The zone's free list for ``order`` is one well-formed circular list of exactly ``members``:
    next and prev agree, every head is aligned to its order, nr_free counts them."""
    entry = machine.zones[zone.node, zone.zone]
    head = pg.list_head_address(zone.node, zone.zone, order)
    nr_free = int(entry["nr_free"][order])
    if nr_free != len(members):
        raise VerifyError(
            f"node {zone.node} {zone.name} order {order}: nr_free {nr_free}, {len(members)} heads found"
        )
    if not len(members):
        if entry["free_next"][order] != head or entry["free_prev"][order] != head:
            raise VerifyError(
                f"node {zone.node} {zone.name} order {order}: empty list head does not point to itself"
            )
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
    nexts = np.concatenate([[entry["free_next"][order]], machine.raw[members, 1]])
    prevs = np.concatenate([[entry["free_prev"][order]], machine.raw[members, 2]])
    order_of = np.argsort(address)
    succ = _index_of(address, order_of, nexts)
    pred = _index_of(address, order_of, prevs)
    bad = np.flatnonzero((succ < 0) | (pred < 0))
    if not len(bad):
        bad = np.flatnonzero(pred[succ] != np.arange(len(succ)))
    if len(bad):
        node = int(bad[0])
        pfn = int(members[node - 1]) if node else None
        raise VerifyError(
            f"node {zone.node} {zone.name} order {order}: broken list link at "
            + (f"pfn {pfn}" if pfn is not None else "the list head"),
            pfn=pfn,
            field="lru",
        )
    if not _single_ring(succ):
        raise VerifyError(f"node {zone.node} {zone.name} order {order}: the free list is not one ring")


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


def _check_inside(blocks: np.ndarray, free: list[tuple[int, int]], zone: Zone) -> None:
    """Every block lies inside one free range of its zone."""
    if not len(blocks):
        return
    starts = np.array([lo for lo, _ in free], np.int64)
    ends = np.array([hi for _, hi in free], np.int64)
    which = np.searchsorted(starts, blocks[:, 0], side="right") - 1
    outside = (which < 0) | (blocks[:, 1] > ends[np.maximum(which, 0)])
    if outside.any():
        pfn = int(blocks[outside][0, 0])
        raise VerifyError(
            f"pfn {pfn}: free block runs outside the zone's free memory ({zone.name})",
            pfn=pfn,
            field="private",
        )


def _check_no_overlap(blocks: np.ndarray) -> None:
    ordered = blocks[np.argsort(blocks[:, 0])]
    overlap = np.flatnonzero(ordered[1:, 0] < ordered[:-1, 1])
    if len(overlap):
        pfn = int(ordered[overlap[0] + 1, 0])
        raise VerifyError(f"pfn {pfn}: free block overlaps the one before it", pfn=pfn, field="private")


def _check_other_zones_empty(machine: Machine) -> None:
    """Zones deferred init does not touch have empty lists and no managed pages in this model."""
    deferred = {(z.node, z.zone) for z, _, _ in machine.deferred_ranges()}
    for n in range(len(machine.nodes)):
        for z in range(pg.MAX_NR_ZONES):
            if (n, z) in deferred:
                continue
            entry = machine.zones[n, z]
            if entry["nr_free"].any() or entry["managed_pages"]:
                raise VerifyError(
                    f"node {n} zone {pg.ZONE_NAMES[z]} has free pages deferred init did not free"
                )
