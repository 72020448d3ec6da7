"""Engine overhead against multiprocessing's own pools, all measured in one run.

    .venv/bin/python bench/engine_overhead.py [--chunks 100000] [--repeat 5]

- per-chunk cost of a job of empty chunks on 2 processes (caller + 1 helper; load_balance_factor
  raised so the kernel's rules cut the job into --chunks chunks of 1), against Pool.map and
  ProcessPoolExecutor.map with chunksize 1 over the same number of empty calls, pools made first;
- round trip of a small job (8 chunks, 2 processes) on a warm engine;
- pool start (2 workers, numpy imported in each, pinned) for each start method.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

from noop import nothing, nothing_one  # this script's folder is on sys.path

from padata_mp import MtJob, Padata


def nothing_here(start: int, end: int, arg: object) -> None:
    """The same empty work, defined in this script: its ``__main__`` travels by value."""


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        out.append(time.perf_counter() - began)
    return out


def per_chunk(chunks: int, repeat: int) -> dict[str, float]:
    job = MtJob(nothing, None, 0, chunks, max_threads=2)
    with Padata(2, load_balance_factor=chunks) as engine:
        report = engine.do_multithreaded(job)
        assert len(report.chunks) == chunks and report.nworks == 2, report.nworks
        padata = timed(lambda: engine.do_multithreaded(job), repeat)
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(2) as pool:
        pool.map(nothing_one, range(100))
        poolmap = timed(lambda: pool.map(nothing_one, range(chunks), chunksize=1), repeat)
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        list(ex.map(nothing_one, range(100)))
        ppe = timed(lambda: list(ex.map(nothing_one, range(chunks), chunksize=1)), max(1, repeat // 2))
    return {
        name: statistics.median(t) / chunks * 1e6
        for name, t in (("padata_mp", padata), ("Pool.map", poolmap), ("ProcessPoolExecutor", ppe))
    }


def round_trip(repeat: int, fn=nothing) -> list[float]:
    job = MtJob(fn, None, 0, 100, max_threads=2)
    with Padata(2) as engine:
        engine.do_multithreaded(job)
        return timed(lambda: engine.do_multithreaded(job), repeat)


def pool_start(method: str, repeat: int) -> tuple[float, list[float]]:
    """The first start in this interpreter (a forkserver starts then, importing numpy once), and
    later ones."""

    def start() -> None:
        Padata(2, start_method=method).close()

    return timed(start, 1)[0], timed(start, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    # Pool start first: a forkserver starts once per interpreter, and the first pool pays for it.
    print("pool start, 2 workers pinned with numpy imported: first in the interpreter, then median of 5:")
    for method in ("forkserver", "spawn", "fork"):
        first, later = pool_start(method, 5)
        print(f"  {method:10s} {first * 1e3:7.1f} ms  {statistics.median(later) * 1e3:7.1f} ms")

    costs = per_chunk(args.chunks, args.repeat)
    print(f"per-chunk cost, {args.chunks} empty chunks, 2 processes (median of {args.repeat}):")
    for name, us in costs.items():
        ratio = "" if name == "padata_mp" else f"  (padata_mp costs {costs['padata_mp'] / us:.3f}x this)"
        print(f"  {name:22s} {us:7.2f} us/chunk{ratio}")
    for what, fn in (("", nothing), (", thread_fn from __main__ (by value)", nothing_here)):
        trips = round_trip(1000, fn)
        median, p90 = statistics.median(trips) * 1e6, statistics.quantiles(trips, n=10)[-1] * 1e6
        print(f"round trip, 8-chunk job on 2 processes, warm{what}: median {median:.0f} us, p90 {p90:.0f} us")


if __name__ == "__main__":
    main()
