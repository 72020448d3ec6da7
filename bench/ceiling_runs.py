"""The store ceiling's single runs, to see how much they spread: ``--runs`` runs of the C library's
pthreads storing over a 1 GiB block (mapped and faulted in), plain and non-temporal, per thread
count; GB/s, median and range.  Needs a C compiler.

    .venv/bin/python bench/ceiling_runs.py [--threads 1,2] [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from padata_mp import SharedArray
from padata_mp.native import build, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    built = build("library")
    if built.path is None:
        raise SystemExit(f"no C library here: {built.why}")
    lib = load(str(built.path))
    with SharedArray.create((1 << 30) // 8, np.uint64) as block:
        words = block.array
        words.fill(1)  # mapped and faulted in before any timing
        for threads in (int(t) for t in args.threads.split(",")):
            for name, nontemporal in (("plain", 0), ("nontemporal", 1)):
                gbps = [
                    words.nbytes
                    / lib.padata_store_best_ns(words.ctypes.data, words.nbytes, threads, nontemporal, 1)
                    for _ in range(args.runs)
                ]
                print(
                    f"{threads} thread(s) {name:11}: median {statistics.median(gbps):5.1f} GB/s, "
                    f"range {min(gbps):5.1f} to {max(gbps):5.1f}"
                )


if __name__ == "__main__":
    main()
