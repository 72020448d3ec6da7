"""Deferred init time against simulated memory, and the coordinator's own memory beside the block.

    .venv/bin/python bench/scaling_mem.py [--sizes 8G,64G,256G,1T] [--threads 2] [--repeat 3]

For each size: create the machine, attach, run deferred init (median of --repeat, machine reset
between runs), verify once; print ms, ns per page, and the coordinator's RssAnon (its private
memory: the shared block is not counted) at its peak.
"""

from __future__ import annotations

import argparse
import statistics
import time

from padata_mp import Padata
from padata_mp.mm import Machine, deferred_init


def rss_anon_mib() -> float:
    """This process's private resident memory (VmHWM would count the shared block too)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8G,64G,256G,1T")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'mem':>6} | {'pages':>11} | {'create s':>8} | {'attach s':>8} | {'init ms':>9} | {'ns/page':>7} | "
        f"{'verify s':>8} | RssAnon MiB"
    )
    with Padata(args.threads) as engine:
        for size in args.sizes.split(","):
            began = time.perf_counter()
            with Machine.create(size, 1) as machine:
                created = time.perf_counter() - began
                attach = max(engine.attach(*machine.shared_arrays).values())
                times, peak = [], rss_anon_mib()
                for _ in range(args.repeat):
                    machine.reset()
                    result = deferred_init(machine, engine, args.threads)
                    times.append(result.elapsed_ms)
                    peak = max(peak, rss_anon_mib())
                began = time.perf_counter()
                machine.verify()
                verify_s = time.perf_counter() - began
                peak = max(peak, rss_anon_mib())
                ms = statistics.median(times)
                print(
                    f"{size:>6} | {result.pages:>11} | {created:8.2f} | {attach:8.2f} | {ms:9.1f} | "
                    f"{ms * 1e6 / result.pages:7.2f} | {verify_s:8.2f} | {peak:.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
