"""padata_mp: the Linux kernel's padata multithreaded jobs on a persistent, NUMA-pinned process pool.

from padata_mp import MtJob, Padata

def clear(start, end, arg):          # a module-level function: workers import it
    arg.array[start:end] = 1

with Padata() as engine, SharedArray.create(1 << 20) as block:
    engine.do_multithreaded(MtJob(clear, block, 0, 1 << 20, align=4096, min_chunk=4096,
                                  max_threads=4))
"""

from .errors import EngineClosedError, JobFailedError, PadataError, ShmSpaceError, WorkerDiedError
from .job import MtJob, Plan, plan
from .pool import CALLER, JobReport, Padata, default_engine, do_multithreaded
from .shm import SharedArray
from .topology import Node, Topology, read_topology, synthetic

__all__ = [
    "CALLER",
    "EngineClosedError",
    "JobFailedError",
    "JobReport",
    "MtJob",
    "Node",
    "Padata",
    "PadataError",
    "Plan",
    "SharedArray",
    "ShmSpaceError",
    "Topology",
    "WorkerDiedError",
    "default_engine",
    "do_multithreaded",
    "plan",
    "read_topology",
    "synthetic",
]
