"""Where a one-thread job's time goes: deferred init of a 64 GiB machine as one call in this
process (the bench's (0) row), through ``do_multithreaded`` (one call, in the caller), and through
``submit`` (one call, in a worker: the job's caller is a worker of its node), with the worker's own
time for the call; then an empty job through ``submit`` with the processes warm and after they
have idled.  Interleaved rounds, medians, ms.

    .venv/bin/python bench/one_thread.py [--kernel numpy|c] [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

from padata_mp import MtJob, Padata
from padata_mp.bench.runner import nothing
from padata_mp.mm import Machine
from padata_mp.mm.deferred import DeferredInitWork


def one_call(engine: Padata, machine: Machine, kernel: str, rounds: int) -> dict[str, list[float]]:
    work = DeferredInitWork(machine, kernel)
    times: dict[str, list[float]] = {
        "in this process": [],
        "do_multithreaded": [],
        "submit": [],
        "in the worker": [],
    }
    for _ in range(rounds):
        for how in ("in this process", "do_multithreaded", "submit"):
            machine.reset()
            job = work.begin({0: 1})[0]
            began = time.perf_counter()
            if how == "in this process":
                job.thread_fn(job.start, job.end, job.fn_arg)
            elif how == "do_multithreaded":
                engine.do_multithreaded(job)
            else:
                report = engine.submit(job, node=0).result()
                times["in the worker"].append(sum(report.busy_s.values()) * 1e3)
            times[how].append((time.perf_counter() - began) * 1e3)
            work.end(0)
    return times


def empty_job(engine: Padata, runs: int = 40) -> dict[str, list[float]]:
    job = MtJob(nothing, None, 0, 1, max_threads=1)
    times: dict[str, list[float]] = {"warm": [], "after 50 ms asleep": [], "after 50 ms busy": []}
    for how, times_of in times.items():
        for _ in range(runs):
            if how == "after 50 ms asleep":
                time.sleep(0.05)
            elif how == "after 50 ms busy":
                until = time.perf_counter() + 0.05
                while time.perf_counter() < until:
                    pass
            began = time.perf_counter()
            engine.submit(job, node=0).result()
            times_of.append((time.perf_counter() - began) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="numpy", choices=("numpy", "c"))
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with Padata(2) as engine, Machine.create("64G", 1) as machine:
        engine.attach(*machine.shared_arrays)
        print(f"deferred init of 64G as one call, {args.kernel} kernel, median of {args.rounds}:")
        for how, ms in one_call(engine, machine, args.kernel, args.rounds).items():
            print(f"  {how:18} {statistics.median(ms):8.2f} ms")
        print("an empty job through submit, median of 40:")
        for how, ms in empty_job(engine).items():
            print(f"  {how:18} {statistics.median(ms):8.3f} ms")


if __name__ == "__main__":
    main()
