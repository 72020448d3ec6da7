"""What a production box needs: a SIGKILLed coordinator leaves nothing, soak runs stay flat."""

import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from padata_mp import Padata
from tests.conftest import SHM

COORDINATOR = textwrap.dedent(
    """
    import os, sys, time
    from padata_mp import Padata
    from padata_mp.mm import Machine, deferred_init

    if __name__ == "__main__":
        with Padata(2) as engine, Machine.create("8G", 1) as machine:
            engine.attach(*machine.shared_arrays)
            deferred_init(machine, engine)
            print(" ".join(str(pid) for _, pid, _ in engine.workers), flush=True)
            time.sleep(60)
    """
)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_sigkilled_coordinator_leaves_no_worker_and_no_segment(tmp_path):
    script = tmp_path / "coordinator.py"
    script.write_text(COORDINATOR)
    before = set(os.listdir(SHM))
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    workers = [int(pid) for pid in proc.stdout.readline().split()]
    assert len(workers) == 2, proc.stderr.read()
    ours = {name for name in set(os.listdir(SHM)) - before if name.startswith(f"padata_mp_{proc.pid}_")}
    assert len(ours) == 4  # memmap, pageblocks, zones, records
    proc.kill()
    proc.wait()
    killed = time.monotonic()
    while any(alive(pid) for pid in workers) and time.monotonic() - killed < 1.0:
        time.sleep(0.02)
    assert not any(alive(pid) for pid in workers), "workers outlived their coordinator by a second"
    # The resource tracker unlinks the dead creator's blocks; a new engine sweeps any it missed.
    with Padata(1):
        assert ours & set(os.listdir(SHM)) == set()


@pytest.mark.slow
@pytest.mark.parametrize(("soak", "count"), [("soak_jobs", 10_000), ("soak_machines", 200)])
def test_soak_stays_flat(soak, count):
    """10,000 jobs on one engine; 200 create/init/verify/close cycles of a small machine."""
    from tests import soak as soaks

    figures = getattr(soaks, soak)(count)
    assert figures["rss_growth_mib"] < 20, figures
    assert figures["fds_growth"] == 0 and figures["threads_growth"] == 0, figures
    assert figures["children_growth"] == 0 and figures["shm_growth"] == 0, figures
