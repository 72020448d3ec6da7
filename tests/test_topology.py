"""Topology from fake sysfs trees, synthetic topologies, and pinning read back from the workers."""

from pathlib import Path

import psutil
import pytest

from padata_mp import MtJob, Padata, read_topology, synthetic
from padata_mp.topology import describe, parse_synthetic
from tests import fns


def fake_sysfs(
    root: Path, nodes: dict[int, tuple[str, int]], online_cpus: str | None = None, cpu_max: str | None = None
) -> Path:
    """nodes: id -> (cpulist, MemTotal kB)."""
    node_dir = root / "devices/system/node"
    node_dir.mkdir(parents=True)
    (node_dir / "online").write_text(",".join(str(n) for n in sorted(nodes)) + "\n")
    for nid, (cpulist, kb) in nodes.items():
        d = node_dir / f"node{nid}"
        d.mkdir()
        (d / "cpulist").write_text(cpulist + "\n")
        (d / "meminfo").write_text(f"Node {nid} MemTotal:       {kb} kB\nNode {nid} MemFree: 1 kB\n")
    (root / "devices/system/cpu").mkdir(parents=True)  # every sysfs has it
    if online_cpus is not None:
        (root / "devices/system/cpu/online").write_text(online_cpus + "\n")
    if cpu_max is not None:
        (root / "fs/cgroup").mkdir(parents=True)
        (root / "fs/cgroup/cpu.max").write_text(cpu_max + "\n")
    return root


def test_two_nodes(tmp_path):
    t = read_topology(fake_sysfs(tmp_path, {0: ("0-3", 1024), 1: ("4-7", 2048)}), allowed_cpus=set(range(8)))
    assert [n.cpus for n in t.nodes] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [n.mem_bytes for n in t.nodes] == [1024 * 1024, 2048 * 1024]
    assert t.cpu_limit == 8 and t.default_workers() == 8
    assert t.place(8) == [0, 1, 0, 1, 0, 1, 0, 1]


def test_four_nodes_with_a_memoryless_one(tmp_path):
    t = read_topology(
        fake_sysfs(tmp_path, {0: ("0-1", 100), 1: ("2-3", 0), 2: ("4-5", 100), 3: ("", 100)}),
        allowed_cpus=set(range(6)),
    )
    assert [n.id for n in t.nodes_with_cpus] == [0, 1, 2]  # node 3 is memory only
    assert t.nodes[1].mem_bytes == 0 and t.nodes[1].cpus == (2, 3)
    assert sorted(t.place(6)) == [0, 0, 1, 1, 2, 2]


def test_offline_cpus_and_a_cpuset(tmp_path):
    root = fake_sysfs(tmp_path, {0: ("0-3", 100), 1: ("4-7", 100)}, online_cpus="0-2,4-7")
    t = read_topology(root, allowed_cpus={1, 2, 3, 4})
    assert [n.cpus for n in t.nodes] == [(1, 2), (4,)]
    assert t.default_workers() == 3


def test_cgroup_quota_caps_the_cpus(tmp_path):
    root = fake_sysfs(tmp_path, {0: ("0-7", 100)}, cpu_max="250000 100000")
    t = read_topology(root, allowed_cpus=set(range(8)))
    assert t.cpu_limit == 3 and t.default_workers() == 3
    unlimited = read_topology(
        fake_sysfs(tmp_path / "b", {0: ("0-7", 100)}, cpu_max="max 100000"), allowed_cpus=set(range(8))
    )
    assert unlimited.cpu_limit == 8


def test_no_numa_in_the_kernel(tmp_path):
    (tmp_path / "devices/system/cpu").mkdir(parents=True)  # a sysfs with no node directory
    t = read_topology(tmp_path, allowed_cpus={0, 1})
    assert len(t.nodes) == 1 and t.nodes[0].cpus == (0, 1)


def test_synthetic_nodes_over_the_host_cpus():
    host_cpus = sorted(c for n in read_topology().nodes for c in n.cpus)
    t = parse_synthetic("2x1")
    assert [len(n.cpus) for n in t.nodes] == [1, 1]
    assert {c for n in t.nodes for c in n.cpus} <= set(host_cpus)
    big = synthetic(4, 2)  # 2 CPUs a node where the host has them; they wrap where it has fewer
    assert len(big.nodes) == 4 and big.default_workers() == 4 * min(2, len(host_cpus))
    with_memory = [n.id for n in read_topology().nodes if n.mem_bytes] or [read_topology().nodes[0].id]
    assert [n.host_node for n in big.nodes] == [with_memory[k % len(with_memory)] for k in range(4)]
    for bad in ("0", "x", "2x0", "-1"):
        with pytest.raises(ValueError):
            parse_synthetic(bad)


def test_describe_says_what_the_engine_uses(tmp_path):
    t = read_topology(
        fake_sysfs(tmp_path, {0: ("0-1", 2**20), 1: ("2-3", 2**20)}), allowed_cpus=set(range(4))
    )
    text = describe(t)
    assert "node 0: cpus 0-1  memory 1.0 GiB" in text
    assert "engine: 4 workers (node 0: 2, node 1: 2)" in text


def test_workers_are_pinned_to_their_node():
    topo = parse_synthetic("2x1")
    with Padata(topology=topo) as e:
        assert [node for _, _, node in e.workers] == [0, 1]
        for _, pid, node in e.workers:
            assert tuple(psutil.Process(pid).cpu_affinity()) == topo.node(node).cpus


def test_node_jobs_use_only_that_nodes_workers(counts):
    topo = parse_synthetic("2x2")
    with Padata(4, topology=topo) as e:
        node_of = {wid: node for wid, _, node in e.workers}
        for node in (0, 1):
            report = e.do_multithreaded(
                MtJob(fns.count_slowly, (counts, 0.01), 0, 1 << 16, max_threads=4), node=node
            )
            helpers = {wid for _, _, wid in report.chunks} - {-1}
            assert helpers and all(node_of[w] == node for w in helpers)


def test_numa_aware_helpers_go_round_robin_across_jobs(counts):
    topo = parse_synthetic("2x2")
    with Padata(4, topology=topo) as e:
        node_of = {wid: node for wid, _, node in e.workers}
        seen = []
        for _ in range(2):
            # max_threads 2: one helper per job; the round-robin moves on to the next node each time
            job = MtJob(fns.count_slowly, (counts, 0.01), 0, 1 << 16, max_threads=2, numa_aware=True)
            report = e.do_multithreaded(job)
            seen.append({node_of[w] for _, _, w in report.chunks if w != -1})
        assert seen == [{0}, {1}]


def test_a_folder_that_is_no_sysfs_is_refused(tmp_path):
    from padata_mp import BadValueError

    with pytest.raises(BadValueError, match="no sysfs"):
        read_topology(tmp_path)
