"""The command line: what it prints, and one line with exit status 2 for every bad value."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from padata_mp import read_topology
from tests.conftest import OwnShm


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``padata-mp args``; the result's ``pid`` is the process's, for OwnShm.left."""
    with subprocess.Popen(
        [sys.executable, "-m", "padata_mp", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        stdout, stderr = proc.communicate(timeout=timeout)
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    out.pid = proc.pid
    return out


def test_padata_mp_alone_prints_help():
    out = cli()
    assert out.returncode == 0 and "topology" in out.stdout and "bench" in out.stdout, out.stderr


def test_topology():
    out = cli("topology")
    assert out.returncode == 0, out.stderr
    assert "node 0: cpus" in out.stdout and "engine:" in out.stdout
    out = cli("topology", "--synthetic", "2x1")
    assert "node 1: cpus" in out.stdout and "(host node 0)" in out.stdout


def test_init_prints_the_kernels_lines_and_verifies():
    shm = OwnShm()
    out = cli("init", "--mem", "6G", "--nodes", "2", "--verify")
    assert out.returncode == 0, out.stderr
    assert "node 0: DMA 0x0-0x1000, DMA32 0x1000-0xc0000;" in out.stdout  # 3 GiB a node
    assert "node 0 deferred pages initialised in" in out.stdout
    assert "node 1 deferred pages initialised in" in out.stdout
    assert "Mpages/s" in out.stdout and "GB/s" in out.stdout
    assert "verified:" in out.stdout
    assert "struct pages on host node 0" in out.stdout
    assert out.stderr == ""  # no resource-tracker warning, nothing else
    assert shm.left(out.pid) == set()


@pytest.mark.parametrize("kernel", ["c", "c-stream"])
def test_init_with_a_c_kernel_verifies(kernel):
    from padata_mp.native import build

    if build("library").path is None:
        pytest.skip(f"no C kernel here: {build('library').why}")
    out = cli("init", "--mem", "6G", "--nodes", "2", "--kernel", kernel, "--verify")
    assert out.returncode == 0, out.stderr
    assert "node 1 deferred pages initialised in" in out.stdout and "verified:" in out.stdout


@pytest.mark.parametrize("nodes", [2, 3])
def test_nodes_auto_simulates_the_synthetic_topologys_nodes(nodes):
    out = cli("init", "--mem", "8G", "--nodes", "auto", "--synthetic", f"{nodes}x1", "--verify")
    assert out.returncode == 0, out.stderr
    described = [line for line in out.stdout.splitlines() if line.startswith("node ") and "deferred" in line]
    assert [line.split(":")[0] for line in described if "pages deferred" in line] == [
        f"node {k}" for k in range(nodes)
    ]
    assert "verified:" in out.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["init", "--mem", "0"],
        ["init", "--mem", "-1G"],
        ["init", "--mem", "lots"],
        ["init", "--mem", "100T"],  # more than /dev/shm holds
        ["init", "--mem", "1G", "--nodes", "0"],
        ["init", "--mem", "1G", "--nodes", "-2"],
        ["init", "--mem", "1G", "--nodes", "9"],  # more nodes than sections
        ["init", "--mem", "1G", "--nodes", "two"],
        ["init", "--threads", "0"],
        ["init", "--threads", "x"],
        ["init", "--synthetic", "0x1"],
        ["bench", "--repeat", "0"],
        ["bench", "--repeat", "many"],
        ["bench", "--threads", "1,0"],
        ["bench", "--threads", "1,2", "--node-percent"],
        ["bench", "--json", "/nonexistent/folder/out.json"],
        ["bench", "--csv", "/tmp"],
        ["bench", "--job", "defrag"],
        ["bench", "--job", "fallocate", "--mem", "1M"],  # less than one huge page
        ["bench", "--job", "hugetlb-1g", "--mem", "5G"],  # no whole GiB deferred
        ["bench", "--job", "vfio", "--kernel", "c"],  # only deferred init and pmem have C kernels
        ["bench", "--mem", "128M"],  # no deferred pages: the first section is initialised at boot
        ["bench", "--mem", "8G", "--nodes", "64"],
        ["bench", "--kernel", "fortran"],
        ["init", "--kernel", "fortran"],
        ["compare", "only-one.json"],
        ["compare", "/nonexistent/a.json", "/nonexistent/b.json"],
        ["compare", "a.json", "b.json", "--fail-above", "lots"],
        ["topology", "--workers", "-1"],
        ["frobnicate"],
    ],
)
def test_bad_values_exit_2_with_one_line(args):
    shm = OwnShm()
    out = cli(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.startswith("padata-mp: error:")
    assert shm.left(out.pid) == set()


def test_plot_without_matplotlib_is_a_clear_error():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        out = cli("bench", "--plot", "/tmp/padata_plot.png")
        assert out.returncode == 2 and "matplotlib" in out.stderr
    else:
        pytest.skip("matplotlib is installed")


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = cli("bench", "--mem", "5G", "--threads", "1,2", "--repeat", "2", "--plot", str(tmp_path / "p.png"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_writes_json_and_csv(tmp_path):
    shm = OwnShm()
    args = ["bench", "--mem", "5G", "--threads", "1,2,64", "--repeat", "2"]
    args += ["--json", str(tmp_path / "b.json"), "--csv", str(tmp_path / "b.csv")]
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    node_cpus = min(len(n.cpus) for n in read_topology().nodes_with_cpus)
    assert ("capped" in out.stderr) == (node_cpus < 64)  # thread counts past a node's CPUs
    assert "node% (thr) | kernel   | speedup" in out.stdout and "(0)" in out.stdout
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["schema"] == "padata_mp.bench/2"
    assert data["argv"] == ["padata-mp", *args]
    assert data["created"].endswith("+00:00") and data["padata_mp_version"]
    assert data["pages"] == 2**18 - 2**15
    # One (0) row and one row per thread count for each kernel measured: numpy always, the C ones
    # where a compiler is found (and then the native rows too, plain and streaming).
    kernels = data["config"]["kernels"]
    assert kernels == (["numpy", "c", "c-stream"] if not data["skipped"] else ["numpy"])
    counts = sorted({0} | {min(t, node_cpus) for t in (1, 2, 64)})
    assert [(r["kernel"], r["threads"]) for r in data["rows"]] == [(k, t) for k in kernels for t in counts]
    for row in data["rows"] + data["native"]:
        assert len(row["times_ms"]) == 2 and row["time_ms"] > 0 and row["pages_per_s"] > 0
        assert min(row["times_ms"]) <= row["ci95_ms"][0] <= row["time_ms"] <= row["ci95_ms"][1]
        assert row["ci95_ms"][1] <= max(row["times_ms"])
        if row["kind"] == "padata_mp":
            plain = row["ratios"]["plain"]
            assert plain["ci95"][0] <= plain["value"] <= plain["ci95"][1]
    assert any("fewer than 5" in w for w in data["warnings"])  # 2 runs each
    machine = data["machine"]
    assert {"cpu_model", "kernel", "thp", "python", "numpy", "start_method", "load_average"} <= set(machine)
    assert data["ceiling"]["gbps"] and data["ceiling"]["method"]
    if "c" in kernels:
        natives = {(n["kernel"], n["threads"]) for n in data["native"]}
        assert natives == {(k, t) for k in ("c", "c-stream") for t in set(counts) - {0}}
        streamed = [r for r in data["rows"] if r["kernel"] == "c-stream"]
        assert all("c" in r["ratios"] for r in streamed) and "c-stream over c" in out.stdout
    lines = (tmp_path / "b.csv").read_text().splitlines()
    assert lines[0].startswith("kind,name,kernel,threads,")
    assert len(lines) == 1 + sum(len(data[k]) for k in ("rows", "native", "peers", "ceilings"))
    assert {c["threads"] for c in data["ceilings"]} == set(counts) - {0}  # measured like the rows
    assert shm.left(out.pid) == set()


@pytest.mark.parametrize("job", ["hugetlb", "hugetlb-1g", "pmem", "vfio", "munmap", "fallocate"])
def test_bench_runs_every_kernel_job(tmp_path, job):
    shm = OwnShm()
    mem = "64M" if job == "fallocate" else "6G"
    out = cli(
        "bench",
        "--job",
        job,
        "--mem",
        mem,
        "--threads",
        "1,2",
        "--repeat",
        "1",
        "--peers",
        "--json",
        str(tmp_path / "b.json"),
    )
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["config"]["job"] == job
    node_cpus = min(len(n.cpus) for n in read_topology().nodes_with_cpus)
    counts = sorted({0} | {min(t, node_cpus) for t in (1, 2)})
    kernels = data["config"]["kernels"]  # pmem's C kernels where a compiler is found
    assert kernels == (["numpy", "c", "c-stream"] if job == "pmem" and "c" in kernels else ["numpy"])
    assert [(r["kernel"], r["threads"]) for r in data["rows"]] == [(k, t) for k in kernels for t in counts]
    assert data["pages"] > 0
    assert {p["name"] for p in data["peers"]} >= {"Pool.map", "ProcessPoolExecutor", "ThreadPoolExecutor"}
    assert not data["native"] and "no native reference" in out.stderr
    assert "node% (thr) | kernel   | speedup" in out.stdout
    assert shm.left(out.pid) == set()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
# A 2 GiB and a 1 GiB memmap, which the kernel frees in about 0.6 and 0.3 s of the 2 allowed.
@pytest.mark.parametrize(
    "command",
    [
        ["init", "--mem", "128G", "--verify"],  # the proof keeps it busy past 2 s on a fast box
        ["bench", "--mem", "64G", "--no-native"],
        # A kernel job with the peers' pools starting or running when the signal lands.
        ["bench", "--job", "munmap", "--mem", "16G", "--peers"],
    ],
)
def test_interrupt_stops_within_2_seconds_and_cleans_up(sig, command):
    shm = OwnShm()
    proc = subprocess.Popen(
        [sys.executable, "-m", "padata_mp", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    time.sleep(2)  # past start-up: creating, attaching, or running
    assert proc.poll() is None, proc.communicate()
    sent = time.monotonic()
    # Ctrl-C reaches the whole foreground process group; SIGTERM only the process named.
    os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 2.0
    assert proc.returncode == 130
    lines = [line for line in err.splitlines() if not line.startswith("[bench]")]
    assert lines == ["padata-mp: interrupted, cleaned up"], err
    # Workers, the forkserver and the resource tracker see the coordinator gone and follow it.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and (shm.left(proc.pid) or session(proc.pid)):
        time.sleep(0.05)
    assert shm.left(proc.pid) == set()
    assert session(proc.pid) == []


def session(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "-s", str(sid)], capture_output=True, text=True).stdout
    return out.strip().splitlines()
