"""The engine's promise under attack, counted: what docs/reliability.md quotes.

    PYTHONPATH=. .venv/bin/python bench/storms.py [--jobs 600] [--interrupts 1000] [--deaths 1000]

- stop-and-kill: a job of tiny chunks on Padata(3), max_threads=4; a worker is SIGSTOPped while it
  holds the cursor's mutex, another is SIGKILLed, the first resumed 0.3 s later.  Counts indices
  run twice, indices neither run nor named in the error, and errors that are not WorkerDiedError.
- ctrl-c: SIGINTs at random moments of result(), watch() and do_multithreaded(), in a child
  process; counts raises after which the job still wrote.
- deaths: SIGKILLs of workers under a descriptor limit of 64, in a child process; the
  coordinator's descriptors before and after, and the workers in service at the end.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from padata_mp import MtJob, Padata, PadataError, SharedArray, WorkerDiedError
from tests import fns
from tests.adversary import covered, stop_a_holder
from tests.test_future import STORM
from tests.test_robust import DEATHS

SIZE = 1 << 15


def stop_and_kill(jobs: int) -> str:
    import os
    import signal

    twice = lost = wrong = caught = 0
    with Padata(3, load_balance_factor=SIZE // 4) as engine, SharedArray.create(SIZE, np.int64) as counts:
        for _ in range(jobs):
            counts.array[:] = 0
            future = engine.submit(MtJob(fns.count, counts, 0, SIZE, max_threads=4))
            holder = stop_a_holder(engine)
            if holder is not None:
                caught += 1
                others = [pid for _, pid, _ in engine.workers if pid != holder]
                if others:
                    os.kill(others[0], signal.SIGKILL)
                time.sleep(0.3)
                os.kill(holder, signal.SIGCONT)
            try:
                future.result(timeout=60)
                error = None
            except PadataError as err:
                error = err
            after = counts.array.copy()
            twice += int((after > 1).sum())
            named = covered(error.not_done, SIZE) if error is not None else np.zeros(SIZE, bool)
            lost += int(((after == 0) & ~named).sum())
            wrong += error is not None and not isinstance(error, WorkerDiedError)
    return (
        f"stop-and-kill: {jobs} jobs, {caught} holders caught; {twice} indices run twice, {lost} neither "
        f"run nor named, {wrong} errors other than WorkerDiedError"
    )


def child(script: str, *args: str) -> str:
    path = Path("/tmp") / f"padata-storm-{abs(hash(script))}.py"
    path.write_text(script)
    out = subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=3600,
        env={"PYTHONPATH": str(Path.cwd()), "PATH": "/usr/bin:/bin"},
    )
    path.unlink()
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--interrupts", type=int, default=1000)
    parser.add_argument("--deaths", type=int, default=1000)
    args = parser.parse_args()
    print(stop_and_kill(args.jobs), flush=True)
    for way in ("result", "watch", "do_multithreaded"):
        late = child(STORM, way, str(args.interrupts))
        print(
            f"ctrl-c in {way}: {args.interrupts} SIGINTs; {late} raises with the job still writing",
            flush=True,
        )
    before, after, workers = child(DEATHS, str(args.deaths)).split()
    print(
        f"deaths: {args.deaths} SIGKILLs, fd limit 64: descriptors {before} before, {after} after; "
        f"{workers} workers in service"
    )


if __name__ == "__main__":
    main()
