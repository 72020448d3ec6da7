"""padata_mp: the Linux kernel's padata multithreaded jobs on a persistent, NUMA-pinned process pool.

from padata_mp import MtJob, Padata

def clear(start, end, arg):          # a module-level function: workers import it
    arg.array[start:end] = 1

with Padata() as engine, SharedArray.create(1 << 20) as block:
    engine.do_multithreaded(MtJob(clear, block, 0, 1 << 20, align=4096, min_chunk=4096,
                                  max_threads=4))
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    BadTypeError,
    BadValueError,
    EngineClosedError,
    JobFailedError,
    PadataError,
    ShmSpaceError,
    WorkerDiedError,
)
from .job import MtJob, Plan, plan
from .pool import CALLER, JobReport, Padata, default_engine, do_multithreaded
from .running import JobFuture, Progress
from .shm import SharedArray
from .topology import Node, Topology, read_topology, synthetic

try:
    __version__ = version("padata_mp")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "CALLER",
    "BadTypeError",
    "BadValueError",
    "EngineClosedError",
    "JobFailedError",
    "JobFuture",
    "JobReport",
    "MtJob",
    "Node",
    "Padata",
    "PadataError",
    "Plan",
    "Progress",
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
