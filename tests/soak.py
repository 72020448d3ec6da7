"""Soak: many jobs on one engine, and many machines created, initialised, verified and closed.
Prints how RSS, open file descriptors, threads, child processes and /dev/shm entries move.

    .venv/bin/python -m tests.soak [--jobs 10000] [--machines 200]
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import numpy as np
import psutil

from padata_mp import MtJob, Padata, SharedArray
from padata_mp.mm import Machine, deferred_init


def count(start: int, end: int, block: SharedArray) -> None:
    block.array[start:end] += 1


def snapshot() -> dict[str, float]:
    """What this process holds now, its garbage collected first: objects that earlier work left
    for the cyclic collector (with the files they hold open) are not this soak's growth."""
    gc.collect()
    me = psutil.Process()
    return {
        "rss_mib": me.memory_info().rss / 2**20,
        "fds": me.num_fds(),
        "threads": me.num_threads(),
        "children": len(me.children(recursive=True)),
        "shm": own_shm_entries(),
    }


def own_shm_entries() -> int:
    """This process's blocks in /dev/shm (named for its pid) and the named semaphores it maps: what
    it holds there, whatever other programs create and remove beside it."""
    blocks = [n for n in os.listdir("/dev/shm") if n.startswith(f"padata_mp_{os.getpid()}_")]
    with open("/proc/self/maps") as f:
        semaphores = {line.split()[-1] for line in f if "/dev/shm/sem." in line}
    return len(blocks) + len(semaphores)


def growth(first: dict[str, float], last: dict[str, float], **extra: float) -> dict[str, float]:
    out = {f"{key}_growth" if key != "rss_mib" else "rss_growth_mib": last[key] - first[key] for key in first}
    return {**out, **{f"final_{k}": v for k, v in last.items()}, **extra}


def soak_jobs(jobs: int) -> dict[str, float]:
    """``jobs`` small jobs on one engine, every result checked; figures after a warm-up."""
    with Padata(2) as engine, SharedArray.create(1 << 16, np.int64) as block:
        job = MtJob(count, block, 0, 1 << 16, align=64, max_threads=2)
        for _ in range(100):  # warm-up: pools, caches, the forkserver
            engine.do_multithreaded(job)
        first, began = snapshot(), time.perf_counter()
        for _ in range(jobs):
            engine.do_multithreaded(job)
        seconds = time.perf_counter() - began
        if not (block.array == jobs + 100).all():
            raise AssertionError("an index was lost or done twice")
        return growth(first, snapshot(), jobs=jobs, us_per_job=seconds / jobs * 1e6)


def soak_machines(cycles: int, mem: str = "5G") -> dict[str, float]:
    """``cycles`` create / init / verify / close cycles of a small machine on one engine."""
    with Padata(2) as engine:
        for _ in range(3):  # warm-up
            with Machine.create(mem, 1) as machine:
                deferred_init(machine, engine)
        first, began = snapshot(), time.perf_counter()
        for _ in range(cycles):
            with Machine.create(mem, 1) as machine:
                deferred_init(machine, engine)
                machine.verify()
        seconds = time.perf_counter() - began
        return growth(first, snapshot(), cycles=cycles, s_per_cycle=seconds / cycles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--machines", type=int, default=200)
    args = parser.parse_args()
    for name, figures in (("jobs", soak_jobs(args.jobs)), ("machines", soak_machines(args.machines))):
        print(name + ": " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
