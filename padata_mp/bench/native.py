"""What compiled code does on the same memory: the native reference of deferred init (the C
program on pthreads, the same chunking) and the store ceiling (the C library's pthreads storing
over the block the job writes, plain and non-temporal, best of N, STREAM's habit).  Where no
compiler is to be had, the ceiling falls back to numpy's fill and memset through the engine."""

from __future__ import annotations

import ctypes
import subprocess
import time
from pathlib import Path

from ..job import MtJob, plan
from ..mm import pages as pg
from ..mm.deferred import DeferredInitWork, splice_all
from ..mm.machine import Machine
from ..native import load, stream_width
from ..pool import Padata
from ..shm import SharedArray

CEILING_REPEAT = 3  # STREAM reports the best of several runs
STORE_VALUE = 0x5A  # never benchmark stores of zero: memset has a faster path for them
NATIVE_CEILING = "C library: pthreads storing over the block, plain and non-temporal (the widest), best of 3"
ENGINE_CEILING = "the engine's processes: numpy fill and memset over the block, best of 3"


def native_init(program: Path, machine: Machine, threads: int, stream: bool = False) -> float:
    """The native reference on this machine's shared memory (``stream``: its non-temporal stores),
    then the splice; ms as it measures."""
    memmap, pageblocks, records = (f"/dev/shm/{a.name}" for a in machine.shared_arrays)
    jobs = [
        f"{j.fn_arg.node}:{j.fn_arg.zone}:{j.start}:{j.end}:{j.fn_arg.end_pfn}:{threads}:"
        f"{plan(j, threads).chunk_size}"
        for j in DeferredInitWork(machine).begin(dict.fromkeys(range(len(machine.nodes)), threads)).values()
        if j.size
    ]
    out = subprocess.run(
        [
            str(program),
            *(["--stream"] if stream else []),
            memmap,
            pageblocks,
            records,
            str(machine.total_pages),
            *jobs,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    ns = int(out.split("total")[1])
    began = time.perf_counter()
    splice_all(machine)
    return ns / 1e6 + (time.perf_counter() - began) * 1e3


def native_ceiling(library: Path, block: SharedArray, processes: int) -> dict[str, float]:
    """GB/s of ``processes`` pthreads storing over ``block`` (mapped and faulted in here):
    "plain", and "nontemporal" where the architecture has such stores."""
    lib, array = load(str(library)), block.array
    out = {}
    for name, nontemporal in (("plain", 0), ("nontemporal", 1)):
        if nontemporal and not stream_width(str(library)):
            continue
        ns = lib.padata_store_best_ns(array.ctypes.data, array.nbytes, processes, nontemporal, CEILING_REPEAT)
        if ns:
            out[name] = array.nbytes / ns
    return out


def store_chunk(start: int, end: int, arg: tuple[SharedArray, str]) -> None:
    """The engine ceiling's thread_fn: store a non-zero value over rows [start, end) of the block."""
    block, how = arg
    tile = block.array[start:end]
    if how == "memset":
        ctypes.memset(tile.ctypes.data, STORE_VALUE, tile.nbytes)
    else:
        tile.fill(STORE_VALUE * 0x0101010101010101)


def engine_ceiling(engine: Padata, block: SharedArray, processes: int) -> dict[str, float]:
    """Store bandwidth of ``processes`` engine processes over ``block`` (pre-faulted in each):
    numpy fill and memset, best of CEILING_REPEAT each; GB/s."""
    rows = block.array.shape[0]
    per_chunk = max(1, pg.TILE * pg.STRUCT_PAGE_SIZE // (block.array.nbytes // rows))
    out = {}
    for how in ("fill", "memset"):
        job = MtJob(
            store_chunk, (block, how), 0, rows, align=per_chunk, min_chunk=per_chunk, max_threads=processes
        )
        best = min(engine.do_multithreaded(job).elapsed_s for _ in range(CEILING_REPEAT))
        out[how] = block.array.nbytes / best / 1e9
    return out
