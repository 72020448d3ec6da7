"""The kernel's deferred struct-page init, run in parallel: one padata job per node.

Each node's job covers its highest zone from the first deferred pfn, with the kernel's
parameters (align = min_chunk = one section, max_threads = the node's CPUs).  A chunk initialises
and frees its sections and records each section's freed heads; the coordinator splices the
records into the zone's free lists when the node's job is done.

The chunk kernels (mm.kernels) do the same work to the same words: numpy's (the default), and the
C kernel storing as the kernel does (``kernel="c"``) or streaming (``"c-stream"``).  The C
kernel's time is the engine's cost plus the work's; numpy's over it is numpy's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import PadataError
from ..job import MtJob
from ..pool import Padata
from ..ranges import Range, ceil_div, clip_ranges, roundup, subtract_ranges
from ..shm import SharedArray
from . import pages as pg
from .buddy import record_heads
from .kernels import Compiled, KernelChoice, choose_kernel
from .layout import Zone
from .machine import Machine
from .runner import NodeRun, run_work
from .verify import VerifySummary

log = logging.getLogger("padata_mp.mm")


@dataclass(frozen=True)
class ZoneJob:
    """fn_arg of a node's deferred-init job: what the chunk function needs, by shared handle."""

    memmap: SharedArray
    pageblocks: SharedArray
    records: SharedArray
    node: int
    zone: int
    end_pfn: int
    holes: tuple[Range, ...]
    compiled: Compiled | None = None  # the C kernel, for init_chunk_c


def _check_sections(start: int, end: int, job: ZoneJob) -> None:
    # Two calls must never share a section's record.
    if start % pg.PAGES_PER_SECTION or (end % pg.PAGES_PER_SECTION and end < job.end_pfn):
        raise ValueError(f"deferred init works in whole sections, got [{start}, {end})")
    # Nothing may reach memory outside the blocks (the C kernel checks the memmap again).
    if not 0 <= start <= end or job.end_pfn > len(job.memmap.array):
        raise ValueError(
            f"[{start}, {end}) of a zone ending at pfn {job.end_pfn} is outside the machine's "
            f"{len(job.memmap.array)} pages"
        )
    top = min(end, job.end_pfn)
    sections, pageblocks = ceil_div(top, pg.PAGES_PER_SECTION), ceil_div(top, pg.PAGEBLOCK_NR_PAGES)
    if len(job.records.array) < sections or len(job.pageblocks.array) < pageblocks:
        raise ValueError(
            f"[{start}, {end}) needs {sections} section records and {pageblocks} pageblocks, but the "
            f"job's blocks hold {len(job.records.array)} and {len(job.pageblocks.array)}: blocks of "
            "another machine?"
        )


def init_chunk(start: int, end: int, job: ZoneJob) -> None:
    """thread_fn of deferred init: initialise and free [start, end), clipped to the zone, holes
    skipped, section by section; record each section's freed heads, linked, for the splice.

    The engine cuts the job on section boundaries (align = PAGES_PER_SECTION); a range that is not
    is refused.
    """
    _check_sections(start, end, job)
    raw, pageblocks, records = job.memmap.array, job.pageblocks.array, job.records.array
    flags = pg.page_flags(job.node, job.zone)
    for section in range(start, min(end, job.end_pfn), pg.PAGES_PER_SECTION):
        top = min(section + pg.PAGES_PER_SECTION, job.end_pfn)
        heads: dict[int, list[np.ndarray]] = {0: [], pg.MAX_ORDER: []}  # order -> pfns freed
        for lo, hi in subtract_ranges((section, top), job.holes):
            order10, order0 = pg.init_and_free(raw, pageblocks, lo, hi, flags)
            heads[pg.MAX_ORDER].append(order10)
            heads[0].append(order0)
        record_heads(raw, records[section // pg.PAGES_PER_SECTION], heads)


def init_chunk_c(start: int, end: int, job: ZoneJob) -> None:
    """init_chunk in C: the same words written, by ``job.compiled`` (plain or streaming stores)."""
    _check_sections(start, end, job)
    assert job.compiled is not None
    holes = np.array(job.holes, np.int64).reshape(-1, 2)
    memmap = job.memmap.array
    job.compiled.call(
        "padata_init_chunk",
        start,
        end,
        memmap.ctypes.data,
        len(memmap),
        job.pageblocks.array.ctypes.data,
        job.records.array.ctypes.data,
        start,
        end,
        job.end_pfn,
        pg.page_flags(job.node, job.zone),
        holes.ctypes.data,
        len(holes),
        job.compiled.stream,
    )


def zone_job(machine: Machine, zone: Zone, compiled: Compiled | None = None) -> ZoneJob:
    memmap, pageblocks, records = machine.shared_arrays
    holes = tuple(clip_ranges(machine.holes, zone.start_pfn, zone.end_pfn))
    return ZoneJob(memmap, pageblocks, records, zone.node, zone.zone, zone.end_pfn, holes, compiled)


def init_job(machine: Machine, zone: Zone, max_threads: int, compiled: Compiled | None = None) -> MtJob:
    """The kernel's deferred-init job for a node's highest zone: from the first deferred pfn to
    the zone's end rounded up to a section, align = min_chunk = one section; the C kernel where
    ``compiled`` is given, else numpy's.  ``retry=True``: a chunk rewrites whole sections and the
    splice comes after, so a re-run is safe."""
    start, end = zone.first_deferred_pfn, zone.end_pfn
    size = roundup(end, pg.PAGES_PER_SECTION) - start if end > start else 0
    return MtJob(
        init_chunk if compiled is None else init_chunk_c,
        zone_job(machine, zone, compiled),
        start=start,
        size=size,
        align=pg.PAGES_PER_SECTION,
        min_chunk=pg.PAGES_PER_SECTION,
        max_threads=max_threads,
        retry=True,
    )


def splice(machine: Machine, zone: Zone) -> None:
    """Add every section's freed blocks to the zone's free lists; count nr_free and managed pages."""
    first = zone.first_deferred_pfn // pg.PAGES_PER_SECTION
    last = ceil_div(zone.end_pfn, pg.PAGES_PER_SECTION)
    pages = machine.free_lists.splice_records(zone, machine.records[first:last])
    machine.zones[zone.node, zone.zone]["managed_pages"] += pages


def splice_all(machine: Machine) -> None:
    """Splice every node's freed sections and mark deferred init done: for runs that freed the
    pages some other way than deferred_init (the benchmark's plain loop, peers, native code)."""
    for zone, _, _ in machine.deferred_ranges():
        splice(machine, zone)
    machine.initialised = True


class DeferredInitWork:
    """Deferred init as a NodeWork: one job per node's highest zone, the splice after it, with
    ``kernel`` one of mm.kernels.KERNELS, or "auto"; ``kernel`` is then the one chosen."""

    bytes_per_page = pg.STRUCT_PAGE_SIZE

    def __init__(self, machine: Machine, kernel: str = "auto"):
        self.machine = machine
        self.kernel, self.compiled = choose_kernel(kernel)
        self.pages = sum(machine.deferred_count(z) for z, _, _ in machine.deferred_ranges())

    def begin(self, threads: dict[int, int]) -> dict[int, MtJob]:
        if self.machine.initialised:
            raise PadataError("deferred init has already run on this machine")
        return {
            z.node: init_job(self.machine, z, threads[z.node], self.compiled)
            for z, _, _ in self.machine.deferred_ranges()
        }

    def end(self, node: int) -> None:
        splice(self.machine, self.machine.nodes[node].highest_zone)
        self.machine.initialised = True

    def verify(self) -> VerifySummary:
        return self.machine.verify()


def deferred_init(
    machine: Machine,
    engine: Padata | None = None,
    threads: int | None = None,
    on_progress: Callable[[float], None] | None = None,
    kernel: KernelChoice = "auto",
) -> NodeRun:
    """The kernel's deferred struct-page init: one job per node, all nodes at once.

    Each job has the kernel's parameters: align = min_chunk = one section, max_threads = the CPUs
    of the engine node that hosts the simulated node (or ``threads``), helpers on that node.  The
    result's ``node_ms`` holds each node's time; ``elapsed_ms`` the whole, the kernel's figure.
    Logs "node %d deferred pages initialised in %ums" per node.  ``on_progress``: see run_work.
    ``kernel``: "auto" (the default: the fastest here, c-stream where a C compiler is, else numpy),
    "numpy", "c" (the C chunk kernel, the kernel's cached stores) or "c-stream" (the same words,
    non-temporal stores); a C kernel asked for by name that cannot be built raises PadataError
    before any work.  The result's ``kernel`` names the one that ran.

    The machine's blocks are mapped and pre-faulted in every idle worker first (``attach``, as
    the kernel's memmap is mapped long before deferred init runs), timed apart in the result's
    ``attach_ms``; ``node_ms`` and ``elapsed_ms`` are the job's alone.
    """
    work = DeferredInitWork(machine, kernel)
    run = run_work(work, range(len(machine.nodes)), engine, threads, on_progress, machine.shared_arrays)
    run.kernel = work.kernel
    for node, ms in run.node_ms.items():
        log.info("node %d deferred pages initialised in %ums", node, round(ms))
    return run
