"""Round trip of a small job on a warm engine, by percentile: the engine's hand-offs alone.

    .venv/bin/python bench/round_trip.py LABEL

3000 runs of an 8-chunk job of empty chunks on 2 processes (the caller and one helper), after 200
to warm up; prints LABEL and the 25th and 50th percentiles in microseconds.
"""

from __future__ import annotations

import sys
import time

from noop import nothing  # this script's folder is on sys.path

from padata_mp import MtJob, Padata

if __name__ == "__main__":
    job = MtJob(nothing, None, 0, 100, max_threads=2)
    with Padata(2) as engine:
        for _ in range(200):
            engine.do_multithreaded(job)
        times = []
        for _ in range(3000):
            began = time.perf_counter()
            engine.do_multithreaded(job)
            times.append(time.perf_counter() - began)
    times.sort()
    label = sys.argv[1] if len(sys.argv) > 1 else "round trip"
    print(f"{label} p25 {times[750] * 1e6:.0f} us, p50 {times[1500] * 1e6:.0f} us")
