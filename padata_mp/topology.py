"""NUMA topology as this process may use it, and pinning to it.

Read from sysfs (the root is a parameter, so tests can lay out fake trees as hwloc's HWLOC_FSROOT
does), intersected with the CPUs this process may run on and capped by a cgroup CPU quota.  A
synthetic topology lays more nodes than the host has over the real CPUs, to simulate big machines.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import psutil

from .checks import integer
from .errors import BadValueError


@dataclass(frozen=True)
class Node:
    """A NUMA node: the CPUs this process may use on it, its memory, and the host node that backs
    it (itself, except in a synthetic topology)."""

    id: int
    cpus: tuple[int, ...]
    mem_bytes: int
    host_node: int


@dataclass(frozen=True)
class Topology:
    """The nodes, and ``cpu_limit``: how many CPUs' worth of time this process may use at once
    (the allowed CPUs, capped by a cgroup quota)."""

    nodes: tuple[Node, ...]
    cpu_limit: int
    source: str

    @property
    def nodes_with_cpus(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.cpus)

    def node(self, node_id: int) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise BadValueError(f"no node {node_id}; nodes are {[n.id for n in self.nodes]}")

    def default_workers(self) -> int:
        """One worker per CPU the topology offers, capped by ``cpu_limit``."""
        return min(sum(len(n.cpus) for n in self.nodes), self.cpu_limit)

    def place(self, workers: int) -> list[int]:
        """The node of each of ``workers`` workers: dealt round-robin over the nodes' CPUs, so each
        node gets workers in proportion to its CPUs (and more than its CPUs only when asked for
        more workers than there are CPUs)."""
        nodes = self.nodes_with_cpus
        if not nodes:
            raise BadValueError("the topology has no node with CPUs")
        slots = [n.id for i in range(max(len(n.cpus) for n in nodes)) for n in nodes if i < len(n.cpus)]
        return [slots[i % len(slots)] for i in range(workers)]


def read_topology(root: str | os.PathLike = "/sys", allowed_cpus: set[int] | None = None) -> Topology:
    """The host's topology from sysfs under ``root``.

    ``allowed_cpus`` defaults to this process's affinity (a cpuset).  Offline CPUs are dropped.  A
    kernel without NUMA (no node directory) reads as one node holding every allowed CPU.
    """
    root = Path(root)
    if not root.is_dir():
        raise BadValueError(
            f"the sysfs root {str(root)!r} is not a folder: name the folder sysfs is mounted on"
        )
    if not (root / "devices/system/cpu").is_dir():  # every Linux sysfs has it, NUMA or not
        raise BadValueError(
            f"{str(root)!r} holds no devices/system/cpu, so it is no sysfs: name the folder sysfs "
            "is mounted on (/sys), or a copy of its devices/system tree"
        )
    allowed = set(os.sched_getaffinity(0)) if allowed_cpus is None else set(allowed_cpus)
    online_cpus = _read_list(root / "devices/system/cpu/online")
    if online_cpus is not None:
        allowed &= online_cpus
    node_dir = root / "devices/system/node"
    node_ids = _read_list(node_dir / "online")
    nodes: tuple[Node, ...]
    if node_ids is None:
        nodes = (Node(0, tuple(sorted(allowed)), psutil.virtual_memory().total, 0),)
    else:
        nodes = tuple(
            Node(
                nid,
                tuple(sorted((_read_list(node_dir / f"node{nid}/cpulist") or set()) & allowed)),
                _node_mem_bytes(node_dir / f"node{nid}/meminfo"),
                nid,
            )
            for nid in sorted(node_ids)
        )
    ncpus = sum(len(n.cpus) for n in nodes)
    quota = _cgroup_cpu_quota(root / "fs/cgroup")
    limit = ncpus if quota is None else max(1, min(ncpus, quota))
    return Topology(nodes, limit, f"sysfs:{root}")


def synthetic(nodes: int, cpus_per_node: int | None = None, host: Topology | None = None) -> Topology:
    """``nodes`` simulated nodes of ``cpus_per_node`` CPUs each, laid over the host's CPUs (they
    wrap around, so nodes share CPUs when the host has too few).  Memory is the host's split evenly;
    simulated node k is backed by host node k modulo the host's nodes with memory.

    A synthetic topology may oversubscribe the host: its default worker count is its own CPU count.
    """
    host = host or read_topology()
    nodes = integer("nodes", nodes, 1)
    cpus = sorted(c for n in host.nodes for c in n.cpus)
    if not cpus:
        raise BadValueError("the host topology has no usable CPU")
    per_node = (
        max(1, len(cpus) // nodes) if cpus_per_node is None else integer("cpus_per_node", cpus_per_node, 1)
    )
    mem_nodes = [n for n in host.nodes if n.mem_bytes] or list(host.nodes)
    mem_each = sum(n.mem_bytes for n in host.nodes) // nodes
    made = tuple(
        Node(
            k,
            tuple(sorted({cpus[(k * per_node + i) % len(cpus)] for i in range(per_node)})),
            mem_each,
            mem_nodes[k % len(mem_nodes)].id,
        )
        for k in range(nodes)
    )
    return Topology(made, nodes * per_node, f"synthetic {nodes}x{per_node}")


def parse_synthetic(spec: str, host: Topology | None = None) -> Topology:
    """``"2x1"``: 2 nodes of 1 CPU; ``"4"``: 4 nodes sharing the host's CPUs."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:x\s*(\d+))?\s*", spec)
    if not match:
        raise BadValueError(f"a synthetic topology is NODES or NODESxCPUS, like 2x1; got {spec!r}")
    cpus = int(match[2]) if match[2] else None
    return synthetic(int(match[1]), cpus, host)


def pin_process(cpus: tuple[int, ...]) -> None:
    """Bind this process (its main thread, and threads it starts later) to ``cpus``."""
    psutil.Process().cpu_affinity(list(cpus))


def pin_thread(cpus: tuple[int, ...]) -> None:
    """Bind the calling thread only: on Linux sched_setaffinity(0) applies to the calling thread."""
    os.sched_setaffinity(0, cpus)


def _read_list(path: Path) -> set[int] | None:
    """A sysfs list such as ``0-3,8,10-11``; None if the file is absent."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    values: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        values.update(range(int(low), int(high or low) + 1))
    return values


def _node_mem_bytes(meminfo: Path) -> int:
    try:
        text = meminfo.read_text()
    except FileNotFoundError:
        return 0
    match = re.search(r"MemTotal:\s+(\d+)\s*kB", text)
    return int(match[1]) * 1024 if match else 0


def _cgroup_cpu_quota(cgroup: Path) -> int | None:
    """CPUs' worth of time allowed by a cgroup v2 ``cpu.max`` or v1 CFS quota, rounded up."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (FileNotFoundError, ValueError):
        try:
            quota = (cgroup / "cpu/cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu/cpu.cfs_period_us").read_text().strip()
        except FileNotFoundError:
            return None
    if quota in ("max", "-1"):
        return None
    return math.ceil(int(quota) / int(period))


def describe(topology: Topology, workers: int | None = None) -> str:
    """What ``padata-mp topology`` prints."""
    lines = [f"topology: {topology.source}"]
    for n in topology.nodes:
        cpus = _format_list(n.cpus) or "-"
        host = "" if n.host_node == n.id else f"  (host node {n.host_node})"
        lines.append(f"node {n.id}: cpus {cpus}  memory {n.mem_bytes / 2**30:.1f} GiB{host}")
    workers = topology.default_workers() if workers is None else workers
    per_node: dict[int, int] = {}
    for nid in topology.place(workers):
        per_node[nid] = per_node.get(nid, 0) + 1
    placed = ", ".join(f"node {nid}: {count}" for nid, count in sorted(per_node.items()))
    lines.append(f"cpu limit: {topology.cpu_limit}")
    lines.append(f"engine: {workers} workers ({placed}), each pinned to its node's CPUs")
    return "\n".join(lines)


def _format_list(values: tuple[int, ...]) -> str:
    parts, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


# -- memory placement: mbind and move_pages (x86-64 syscall numbers) -------------------------

SYS_MBIND, SYS_MOVE_PAGES = 237, 279
MPOL_PREFERRED = 1
_NOT_AVAILABLE = (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.EFAULT)


def bind_memory(address: int, length: int, node: int) -> bool:
    """Prefer ``node`` for the pages of [address, address + length) (a page-aligned range of a
    mapping). On a shared-memory mapping the policy lands on the object, so every process's first
    touch - or fallocate - then allocates there.  False where mbind is not available."""
    if platform.machine() != "x86_64":
        return False
    mask = (ctypes.c_ulong * (node // 64 + 1))()
    mask[node // 64] = 1 << (node % 64)
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.syscall(
        SYS_MBIND,
        ctypes.c_void_p(address),
        ctypes.c_ulong(length),
        MPOL_PREFERRED,
        mask,
        ctypes.c_ulong(64 * len(mask) + 1),
        0,
    )
    if result != 0 and ctypes.get_errno() not in _NOT_AVAILABLE:
        raise OSError(ctypes.get_errno(), f"mbind to node {node} failed")
    return result == 0


def memory_nodes(addresses: list[int]) -> list[int] | None:
    """The node holding each page at ``addresses`` (move_pages with no target: a query), negative
    for a page not present; None where move_pages is not available."""
    if platform.machine() != "x86_64" or not addresses:
        return None
    count = len(addresses)
    pages = (ctypes.c_void_p * count)(*addresses)
    status = (ctypes.c_int * count)()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(SYS_MOVE_PAGES, 0, ctypes.c_ulong(count), pages, None, status, 0) != 0:
        if ctypes.get_errno() in _NOT_AVAILABLE:
            return None
        raise OSError(ctypes.get_errno(), "move_pages failed")
    return list(status)
