"""pmem / ZONE_DEVICE: memmap_init_zone_device() over a device's pfn range, section by section.

A persistent-memory device's struct pages are initialised when it is added (devm_memremap_pages),
one page at a time in the kernel; the series named this as a next job for padata.  Each page gets
__init_single_page() in ZONE_DEVICE, PG_reserved, its dev_pagemap pointer and no driver data, and
every pageblock is MOVABLE.  The device's memmap is a shared block of its own, like the altmap
that puts a device's struct pages on the device.
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
from .kernels import Compiled, KernelChoice, choose_kernel
from .runner import NodeRun, run_work
from .sizes import parse_size
from .verify import VERIFY_BLOCK, VerifyError, compare_words

PGMAP_ADDRESS = 0xFFFF_8881_0000_0000  # the device's struct dev_pagemap, in the direct map
DEFAULT_START_PFN = (1 << 40) // pg.PAGE_SIZE  # above 1 TiB of RAM, section aligned


@dataclass(frozen=True)
class DeviceJob:
    """fn_arg of the device's init job."""

    memmap: SharedArray
    pageblocks: SharedArray
    start_pfn: int
    node: int
    compiled: Compiled | None = None  # the C kernel, for init_device_chunk_c


def device_words(node: int) -> tuple[int, ...]:
    """A device struct page as __init_zone_device_page leaves it: lru.next holds page->pgmap,
    lru.prev page->zone_device_data (NULL)."""
    flags = pg.page_flags(node, pg.ZONE_DEVICE) | pg.PG_RESERVED
    # MEMORY_DEVICE_FS_DAX pages (pmem) keep the refcount of 1 that __init_single_page gives them.
    return (flags, PGMAP_ADDRESS, 0, 0, 0, 0, pg.INIT_COUNTS, 0)


def _device_range(start: int, end: int, job: DeviceJob) -> tuple[int, int]:
    """[start, end) as indices into the device's memmap; ValueError where it is not inside it."""
    lo, hi = start - job.start_pfn, end - job.start_pfn
    if not 0 <= lo <= hi <= len(job.memmap.array):
        raise ValueError(
            f"pfns [{start}, {end}) are outside the device's [{job.start_pfn}, "
            f"{job.start_pfn + len(job.memmap.array)})"
        )
    return lo, hi


def init_device_chunk(start: int, end: int, job: DeviceJob) -> None:
    """thread_fn: memmap_init_zone_device() for pfns [start, end).  Every page gets the same 64
    bytes, so this is one copy of a constant tile per tile: the store bandwidth bound of the jobs
    that write struct pages."""
    lo, hi = _device_range(start, end, job)
    pg.fill_pages(job.memmap.array, lo, hi, device_words(job.node))
    job.pageblocks.array[lo // pg.PAGEBLOCK_NR_PAGES : ceil_div(hi, pg.PAGEBLOCK_NR_PAGES)] = (
        pg.MIGRATE_MOVABLE
    )


def init_device_chunk_c(start: int, end: int, job: DeviceJob) -> None:
    """init_device_chunk in C: the same words, by ``job.compiled`` (plain or streaming stores)."""
    lo, hi = _device_range(start, end, job)
    assert job.compiled is not None
    words = np.array(device_words(job.node), np.uint64)
    job.compiled.call(
        "padata_device_chunk",
        start,
        end,
        job.memmap.array.ctypes.data,
        len(job.memmap.array),
        job.pageblocks.array.ctypes.data,
        lo,
        hi,
        words.ctypes.data,
        job.compiled.stream,
    )


class DeviceMemory(BlockOwner):
    """A pmem device of ``size`` bytes at ``start_pfn`` on ``node``, with its memmap (one struct
    page per 4 KiB) in shared memory, poisoned until initialised: run ``memmap_init_zone_device``
    on it.  Use it as a context manager; the memory is unlinked on exit."""

    def __init__(self, size: str | int, node: int = 0, start_pfn: int = DEFAULT_START_PFN):
        node, start_pfn = integer("node", node, 0), integer("start_pfn", start_pfn, 0)
        if start_pfn % pg.PAGES_PER_SECTION:
            raise BadValueError(
                f"start_pfn must be a multiple of a section ({pg.PAGES_PER_SECTION} pages), got {start_pfn!r}"
            )
        self.pages = parse_size(size) // pg.PAGE_SIZE
        self.node, self.start_pfn = node, start_pfn
        self.initialised = False
        super().__init__()
        try:
            self._memmap = self._create((self.pages, 8), np.uint64)
            self._pageblocks = self._create(ceil_div(self.pages, pg.PAGEBLOCK_NR_PAGES), np.uint8)
            self.reset()
        except BaseException:
            self.close()
            raise

    @property
    def memmap(self) -> np.ndarray:
        """The device's struct pages as (pages, 8) uint64 words; row i is pfn start_pfn + i."""
        return self._memmap.array

    @property
    def shared_arrays(self) -> tuple[SharedArray, ...]:
        return (self._memmap, self._pageblocks)

    def reset(self) -> None:
        """Poison the memmap again (every byte 0xff), as before initialisation."""
        pg.poison(self.memmap)
        self._pageblocks.array.fill(pg.POISON)
        self.initialised = False

    def verify(self) -> int:
        """Prove every device struct page and pageblock is as memmap_init_zone_device leaves it;
        raise VerifyError naming the first bad pfn.  Returns the pages proven."""
        if not self.initialised:
            raise VerifyError("the device's struct pages have not been initialised")
        for lo in range(0, self.pages, VERIFY_BLOCK):
            words = self.memmap[lo : lo + VERIFY_BLOCK]
            compare_words(words, self.start_pfn + lo, device_words(self.node), "a device page")
        blocks = np.flatnonzero(self._pageblocks.array != pg.MIGRATE_MOVABLE)
        if len(blocks):
            pfn = self.start_pfn + int(blocks[0]) * pg.PAGEBLOCK_NR_PAGES
            raise VerifyError(f"device pageblock at pfn {pfn} is not MOVABLE", pfn=pfn, field="pageblock")
        return self.pages


class DeviceInitWork:
    """memmap_init_zone_device as a NodeWork: one job over the device, with ``kernel`` one of
    mm.kernels.KERNELS."""

    bytes_per_page = pg.STRUCT_PAGE_SIZE

    def __init__(self, device: DeviceMemory, kernel: str = "auto"):
        self.device = device
        self.kernel, self.compiled = choose_kernel(kernel)
        self.pages = device.pages

    def begin(self, threads: dict[int, int]) -> dict[int, MtJob]:
        d = self.device
        if d.initialised:
            raise PadataError("this device's struct pages are already initialised")
        memmap, pageblocks = d.shared_arrays
        job = MtJob(
            init_device_chunk if self.compiled is None else init_device_chunk_c,
            DeviceJob(memmap, pageblocks, d.start_pfn, d.node, self.compiled),
            start=d.start_pfn,
            size=d.pages,
            align=pg.PAGES_PER_SECTION,
            min_chunk=pg.PAGES_PER_SECTION,
            max_threads=threads[d.node],
            retry=True,  # every call rewrites its whole range
        )
        return {d.node: job}

    def end(self, node: int) -> None:
        self.device.initialised = True

    def verify(self) -> int:
        return self.device.verify()


def memmap_init_zone_device(
    device: DeviceMemory,
    engine: Padata | None = None,
    threads: int | None = None,
    kernel: KernelChoice = "auto",
) -> NodeRun:
    """Initialise the device's struct pages in parallel: one job, section-aligned chunks, helpers
    on the engine node hosting the device's node (``threads`` of them at most, default its CPUs).
    ``kernel``: "auto" (the default: the fastest here), "numpy", "c" or "c-stream" (non-temporal
    stores, the series' own approach); a C kernel asked for by name that cannot be built raises
    PadataError before any work.  The device's blocks are attached first, timed apart
    (``attach_ms``); the result's ``kernel`` names the kernel that ran."""
    work = DeviceInitWork(device, kernel)
    run = run_work(work, [device.node], engine, threads, arrays=device.shared_arrays)
    run.kernel = work.kernel
    return run
