"""The memory model: a simulated machine's struct pages in shared memory, and the kernel's
memory-proportional jobs run on it in parallel by the engine, each with a proof.

| module | what |
|---|---|
| pages | the x86-64 struct page, __init_single_page and freeing, in numpy tiles |
| sizes | "64G" and friends |
| layout | nodes and zones as on x86-64; where deferral starts |
| buddy | the free lists: records of freed heads, splice, relink, list_del, free_heads |
| verify | the proof's checks, VerifyError and VerifySummary |
| machine | ``Machine``: the shared blocks, early boot, save/restore, ``verify()`` |
| runner | ``NodeWork`` and ``run_work``: one padata job per node, all at once |
| kernels | the chunk kernels: numpy's, and the C one storing plainly or streaming |
| deferred | deferred struct-page init, with any of the kernels |
| hugetlb, pmem, mapping | the series' next jobs: huge page pools, ZONE_DEVICE, mmap/munmap/VFIO |

The model uses the engine; the engine knows nothing of struct pages.
"""

from .deferred import deferred_init, init_chunk, init_chunk_c
from .hugetlb import HugetlbFile, HugetlbPool, hugetlb_alloc, hugetlb_fallocate
from .kernels import KERNELS, Kernel
from .layout import Zone, layout
from .machine import Machine
from .mapping import Mapping, VfioPin, mmap_populate, munmap, vfio_pin
from .pmem import DeviceMemory, memmap_init_zone_device
from .runner import NodeRun, NodeWork, run_work
from .sizes import parse_size
from .verify import VerifyError, VerifySummary

__all__ = [
    "KERNELS",
    "DeviceMemory",
    "HugetlbFile",
    "HugetlbPool",
    "Kernel",
    "Machine",
    "Mapping",
    "NodeRun",
    "NodeWork",
    "VerifyError",
    "VerifySummary",
    "VfioPin",
    "Zone",
    "deferred_init",
    "hugetlb_alloc",
    "hugetlb_fallocate",
    "init_chunk",
    "init_chunk_c",
    "layout",
    "memmap_init_zone_device",
    "mmap_populate",
    "munmap",
    "parse_size",
    "run_work",
    "vfio_pin",
]
