"""What compiled code does on the same memory: the native reference of deferred init (the C
program on pthreads, the same chunking) and the store ceiling (the C library's pthreads storing
over the block the job writes, plain and non-temporal).  Where no compiler is to be had, the
ceiling is numpy's fill through the engine.  A ceiling run is one pass, run in the benchmark's
rounds like any row, so its median and interval come from the same moments as the rows'."""

from __future__ import annotations

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

STORE_VALUE = 0x5A  # never benchmark stores of zero: memset has a faster path for them
NATIVE_CEILING = "C library: pthreads storing over the block, plain and non-temporal (the widest)"
ENGINE_CEILING = "the engine's processes: numpy fill over the block"


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


def ceiling_kinds(library: Path | None) -> tuple[str, ...]:
    """How the ceiling stores: "plain" and, where the CPU has them, "nontemporal" stores from the C
    library; numpy's "fill" through the engine without one."""
    if library is None:
        return ("fill",)
    return ("plain", "nontemporal") if stream_width(str(library)) else ("plain",)


def store_ms(library: Path | None, engine: Padata, block: SharedArray, processes: int, how: str) -> float:
    """One pass of ``processes`` storing a non-zero value over ``block`` (mapped and faulted in
    each), ``how`` one of ceiling_kinds; ms."""
    array = block.array
    if library is not None:
        ns = load(str(library)).padata_store_best_ns(
            array.ctypes.data, array.nbytes, processes, int(how == "nontemporal"), 1
        )
        if not ns:
            raise OSError(f"the C library's store pass failed over {block.name}")
        return float(ns) / 1e6
    rows = array.shape[0]
    per_chunk = max(1, pg.TILE * pg.STRUCT_PAGE_SIZE // (array.nbytes // rows))
    job = MtJob(store_chunk, block, 0, rows, align=per_chunk, min_chunk=per_chunk, max_threads=processes)
    return engine.do_multithreaded(job).elapsed_s * 1e3


def store_chunk(start: int, end: int, block: SharedArray) -> None:
    """The engine ceiling's thread_fn: store a non-zero value over rows [start, end) of the block."""
    block.array[start:end].fill(STORE_VALUE * 0x0101010101010101)
