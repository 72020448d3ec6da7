"""padata_mp: the Linux kernel's padata multithreaded jobs on a persistent, NUMA-pinned process pool.

from padata_mp import MtJob, Padata, SharedArray

def clear(start, end, block):        # any range it is given
    block.array[start:end] = 1

if __name__ == "__main__":
    with Padata() as engine, SharedArray.create(1 << 20) as block:
        engine.do_multithreaded(MtJob(clear, block, 0, 1 << 20, align=4096, max_threads=4))
"""

from importlib import import_module
from typing import TYPE_CHECKING

from .errors import (
    BadTypeError,
    BadValueError,
    EngineClosedError,
    JobFailedError,
    PadataError,
    ShmSpaceError,
    WorkerDiedError,
)

if TYPE_CHECKING:
    from .job import MtJob, Plan, plan
    from .pool import Padata, default_engine, do_multithreaded
    from .running import CALLER, JobCancelledError, JobFuture, JobReport, Progress
    from .shm import SharedArray
    from .topology import Node, Topology, read_topology, synthetic

# The engine is imported on first use of one of its names, not with the package: ``padata-mp``
# can then handle Ctrl-C from its first moment, and workers load only what they run.
_LAZY = {
    **dict.fromkeys(("MtJob", "Plan", "plan"), ".job"),
    **dict.fromkeys(("Padata", "default_engine", "do_multithreaded"), ".pool"),
    **dict.fromkeys(("CALLER", "JobCancelledError", "JobFuture", "JobReport", "Progress"), ".running"),
    "SharedArray": ".shm",
    **dict.fromkeys(("Node", "Topology", "read_topology", "synthetic"), ".topology"),
}


def __getattr__(name: str) -> object:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value: object = version("padata_mp")
        except PackageNotFoundError:  # run from a source tree that was never installed
            value = "0+unknown"
    elif name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
    else:
        raise AttributeError(f"module 'padata_mp' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, "__version__"])


__all__ = [
    "CALLER",
    "BadTypeError",
    "BadValueError",
    "EngineClosedError",
    "JobCancelledError",
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
