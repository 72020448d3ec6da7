"""The jobs ``padata-mp bench --job NAME`` measures: a registry from name to what the job is, its
default size, and how to make its shared memory and its starting state.

Each factory returns a ``Workload``: the job as a NodeWork per chunk kernel, how to go back to its
starting state outside the timing, the blocks the workers touch and the block the ceiling stores
to (what the job writes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..checks import require
from ..errors import BadValueError
from ..mm import pages as pg
from ..mm.deferred import DeferredInitWork, deferred_init
from ..mm.hugetlb import HUGE_ORDERS, HugetlbFile, HugetlbPool
from ..mm.kernels import KERNELS
from ..mm.machine import Machine, MachineState
from ..mm.mapping import BLOCK, Mapping, Munmap, VfioPin, mmap_populate
from ..mm.pmem import DeviceInitWork, DeviceMemory
from ..mm.runner import NodeWork
from ..mm.sizes import parse_size
from ..pool import Padata
from ..ranges import ceil_div
from ..shm import SharedArray
from ..topology import Topology

Base = Machine | DeviceMemory | HugetlbFile


@dataclass
class Workload:
    """A job ready to be measured: a NodeWork per chunk kernel over ``nodes`` simulated nodes, how
    to go back to its starting state, the blocks workers touch, and the block the ceiling stores
    to.  ``machine``: the simulated machine, for the native reference of deferred init."""

    name: str
    works: dict[str, NodeWork]
    nodes: int
    restore: Callable[[], None]
    shared_arrays: tuple[SharedArray, ...]
    written: SharedArray
    mem_per_node: list[int]
    machine: Machine | None = None

    @property
    def work(self) -> NodeWork:
        """The work with the first kernel measured: for sizes, verify and the peers."""
        return next(iter(self.works.values()))


@dataclass(frozen=True)
class Job:
    """One entry of the registry.  ``create(mem, nodes, topology)`` makes the shared memory, with
    every size check, before any process starts; ``prepare(base, engine, stack, kernels)`` brings
    it to the job's starting state (closing what it makes with ``stack``).  ``kernels``: the chunk
    kernels it has."""

    description: str
    default_mem: str
    create: Callable[[str | int, int | str, Topology], Base]
    prepare: Callable[[Any, Padata, contextlib.ExitStack, list[str]], Workload]
    kernels: tuple[str, ...] = ("numpy",)


def _machine(mem: str | int, nodes: int | str, topology: Topology) -> Machine:
    return Machine.create(mem, nodes, topology=topology)


def _machine_with_deferred_pages(mem: str | int, nodes: int | str, topology: Topology) -> Machine:
    """A machine for deferred init: some node must have pages deferred (the kernel initialises each
    node's first section of its highest zone at boot and defers only what follows)."""
    machine = _machine(mem, nodes, topology)
    if not any(machine.deferred_count(z) for z, _, _ in machine.deferred_ranges()):
        machine.close()
        raise BadValueError(
            f"--mem {parse_size(mem) / 2**20:g} MiB on {len(machine.nodes)} node(s) leaves no deferred "
            "pages: a node defers only what follows its highest zone's first section "
            f"({pg.PAGES_PER_SECTION * pg.PAGE_SIZE >> 20} MiB); give more --mem or fewer --nodes"
        )
    return machine


def _machine_with_a_gib(mem: str | int, nodes: int | str, topology: Topology) -> Machine:
    """A machine with room for one 1 GiB page after deferral starts on some node."""
    machine = _machine(mem, nodes, topology)
    gig = 1 << HUGE_ORDERS["1G"]
    zones = [n.highest_zone for n in machine.nodes]
    if not any(z.end_pfn // gig > ceil_div(z.first_deferred_pfn, gig) for z in zones):
        machine.close()
        raise BadValueError(
            f"--mem {mem} leaves no whole, aligned GiB of deferred memory on any node for a 1 GiB page"
        )
    return machine


def _per_node(machine: Machine) -> list[int]:
    return [(n.end_pfn - n.start_pfn) * pg.PAGE_SIZE for n in machine.nodes]


def _deferred_init(
    machine: Machine, engine: Padata, stack: contextlib.ExitStack, kernels: list[str]
) -> Workload:
    # The blocks are attached by the caller, in its timed attach phase.
    works: dict[str, NodeWork] = {k: DeferredInitWork(machine, k) for k in kernels}
    return Workload(
        "init",
        works,
        len(machine.nodes),
        machine.reset,
        machine.shared_arrays,
        machine.shared_arrays[0],
        _per_node(machine),
        machine,
    )


def _after_deferred_init(machine: Machine, engine: Padata) -> None:
    """The later jobs start after deferred init: the machine's attach falls in their set-up."""
    engine.attach(*machine.shared_arrays)
    deferred_init(machine, engine)


def _hugetlb(size: str) -> Callable[..., Workload]:
    def prepare(
        machine: Machine, engine: Padata, stack: contextlib.ExitStack, kernels: list[str]
    ) -> Workload:
        """Half of each node's free memory goes to the boot pool."""
        _after_deferred_init(machine, engine)
        rooms = {n.node: ceil_div(HugetlbPool.room(machine, size, n.node), 2) for n in machine.nodes}
        pool = stack.enter_context(HugetlbPool(machine, size, rooms))
        arrays = machine.shared_arrays + pool.shared_arrays
        restore = _restore(machine, machine.save_state(), pool.reset)
        name = "hugetlb-1g" if size == "1G" else "hugetlb"
        memmap = machine.shared_arrays[0]
        return Workload(
            name, {"numpy": pool}, len(machine.nodes), restore, arrays, memmap, _per_node(machine), machine
        )

    return prepare


def _mapped(job: str) -> Callable[..., Workload]:
    def prepare(
        machine: Machine, engine: Padata, stack: contextlib.ExitStack, kernels: list[str]
    ) -> Workload:
        """A mapping over half of node 0's free order-10 blocks, populated; then the job on it."""
        _after_deferred_init(machine, engine)
        free = len(machine.free_lists.free_heads(machine.nodes[0].highest_zone, pg.MAX_ORDER))
        mapping = stack.enter_context(Mapping(machine, free // 2 * BLOCK))
        engine.attach(*mapping.shared_arrays)
        mmap_populate(mapping, engine)
        state, pfns = machine.save_state(), mapping.pfns.copy()
        work: Any
        if job == "munmap":
            work = Munmap(mapping, 0, mapping.pages)
            restore = _restore(machine, state, lambda: mapping.reset(pfns))
        else:
            work = stack.enter_context(VfioPin(mapping, 0, mapping.pages))
            restore = _restore(machine, state, work.reset)
        arrays = machine.shared_arrays + mapping.shared_arrays + getattr(work, "shared_arrays", ())
        memmap = machine.shared_arrays[0]
        return Workload(
            job, {"numpy": work}, len(machine.nodes), restore, arrays, memmap, _per_node(machine), machine
        )

    return prepare


def _pmem(device: DeviceMemory, engine: Padata, stack: contextlib.ExitStack, kernels: list[str]) -> Workload:
    """A pmem device: its own blocks, one node."""
    works: dict[str, NodeWork] = {k: DeviceInitWork(device, k) for k in kernels}
    arrays = device.shared_arrays
    return Workload("pmem", works, 1, device.reset, arrays, arrays[0], [device.pages * pg.PAGE_SIZE])


def _fallocate(
    file: HugetlbFile, engine: Padata, stack: contextlib.ExitStack, kernels: list[str]
) -> Workload:
    """A hugetlbfs file: its own blocks, one node."""
    arrays = file.shared_arrays
    return Workload(
        "fallocate", {"numpy": file}, 1, file.reset, arrays, arrays[0], [file.pages * pg.PAGE_SIZE]
    )


def _restore(machine: Machine, state: MachineState, then: Callable[[], None]) -> Callable[[], None]:
    def restore() -> None:
        machine.restore_state(state)
        then()

    return restore


JOBS: dict[str, Job] = {
    "init": Job("deferred struct-page init", "64G", _machine_with_deferred_pages, _deferred_init, KERNELS),
    "hugetlb": Job("hugetlb boot pool, 2 MiB pages", "64G", _machine, _hugetlb("2M")),
    "hugetlb-1g": Job("hugetlb boot pool, 1 GiB pages", "64G", _machine_with_a_gib, _hugetlb("1G")),
    "pmem": Job(
        "pmem (ZONE_DEVICE) struct-page init", "64G", lambda mem, nodes, t: DeviceMemory(mem), _pmem, KERNELS
    ),
    "vfio": Job("VFIO page pinning", "64G", _machine, _mapped("vfio")),
    "munmap": Job("munmap with buddy merging", "64G", _machine, _mapped("munmap")),
    # The file's frames are real memory: a smaller default.
    "fallocate": Job("hugetlb fallocate clearing", "2G", lambda mem, nodes, t: HugetlbFile(mem), _fallocate),
}


def job(name: str) -> Job:
    """The registry's entry for ``name``; BadValueError listing the jobs for anything else."""
    require(name in JOBS, f"job must be one of {', '.join(JOBS)}, got {name!r}")
    return JOBS[name]
