"""The benchmark as a measuring instrument: its statistics, warnings, JSON, comparison, the C
kernel it measures the engine with, and the native code built from the installed package."""

import json
import os
import subprocess
import sys

import numpy as np
import psutil
import pytest

from padata_mp import BadValueError
from padata_mp import cli as command_line
from padata_mp.bench import compare, results
from padata_mp.bench.results import MIN_RUNS, Result, Row
from padata_mp.bench.stats import median_ci95, ratio
from padata_mp.mm import KERNELS, DeviceMemory, Machine, deferred_init, memmap_init_zone_device
from padata_mp.mm.kernels import check_kernel
from padata_mp.native import build
from tests.conftest import OwnShm

HAVE_C = build("library").path is not None
needs_c = pytest.mark.skipif(not HAVE_C, reason=f"no C kernel here: {build('library').why}")


def test_the_medians_interval_is_order_statistics():
    times = [float(t) for t in range(1, 10)]  # 9 runs: ranks 2 and 8 hold the median 96% of the time
    assert median_ci95(times) == (2.0, 8.0)
    assert median_ci95([5.0, 1.0, 3.0, 2.0, 4.0]) == (1.0, 5.0)  # under 6 runs: [min, max]
    assert median_ci95([7.0]) == (7.0, 7.0)


def test_a_ratio_is_significant_only_beyond_the_noise():
    rng = np.random.default_rng(1)
    base = list(100 + rng.normal(0, 1, 9))
    slower = [t * 1.2 for t in base]
    assert ratio(slower, base).significant and 1.15 < ratio(slower, base).value < 1.25
    same = list(100 + rng.normal(0, 1, 9))
    assert not ratio(same, base).significant
    assert ratio(slower, base) == ratio(slower, base)  # a fixed seed: the same runs, the same interval


def machine_of(cpus: int) -> dict:
    return {"nodes": [{"node": 0, "cpus": list(range(cpus)), "mem_bytes": 1}], "load_average": [0.0, 0, 0]}


def result_of(rows: list[Row], **fields) -> Result:
    result = Result(machine_of(2), {"job": "init", "mem": "8G", "repeat": 9}, pages=1 << 20, **fields)
    result.rows = [r for r in rows if r.kind in ("plain", "padata_mp")]
    result.native = [r for r in rows if r.kind == "native"]
    result.peers = [r for r in rows if r.kind == "peer"]
    result.ceilings = [r for r in rows if r.kind == "ceiling"]
    result.meta = {"schema": results.SCHEMA}
    result.finish()
    return result


def steady(ms: float, n: int = 9) -> list[float]:
    return [ms * (1 + 0.001 * i) for i in range(n)]


def test_warnings_flag_what_makes_figures_untrustworthy():
    rows = [
        Row("plain", "(0)", "numpy", 0, steady(100)),
        Row("padata_mp", "padata_mp", "numpy", 1, [100, 100, 100, 130, 70, 100, 100, 160, 50]),
        Row("padata_mp", "padata_mp", "numpy", 2, steady(1.0)),
    ]
    result = result_of(rows, round_trip_ms=0.2, ceiling={1: {"plain": 20.0}, 2: {"plain": 15.0}})
    text = "\n".join(result.warnings)
    (spread,) = [w for w in result.warnings if w.startswith("spread")]  # one line for every row
    assert "padata_mp (numpy) (1) " in spread and "(0) (numpy)" not in spread and "--repeat" in spread
    (short,) = [w for w in result.warnings if "round trip" in w]
    assert "padata_mp (numpy) (2)" in short  # 1 ms < 20 x 0.2 ms
    quick_plain = result_of([Row("plain", "(0)", "numpy", 0, steady(1.0))], round_trip_ms=0.2)
    assert not any("round trip" in w for w in quick_plain.warnings)  # it never uses the engine
    assert "ceiling falls from 20.0 GB/s at 1 to 15.0 at 2" in text
    # 2^20 pages of 64 bytes in 1 ms: 67 GB/s, past the 15 GB/s measured for 2 processes.
    assert "above their store ceiling" in text and "padata_mp (numpy) (2) 446%, suspect the row's" in text
    assert "fewer than" not in text and "load average" not in text
    few = result_of([Row("plain", "(0)", "numpy", 0, [1.0, 1.0, 1.0])], round_trip_ms=0.0)
    assert any("3 run(s) per configuration" in w for w in few.warnings)
    busy = result_of([Row("plain", "(0)", "numpy", 0, steady(5))])
    busy.machine["load_average"] = [1.5, 1, 1]
    busy.finish()
    assert any("load average 1.50" in w for w in busy.warnings)


def test_ratios_compare_like_with_like():
    rows = [
        Row("plain", "(0)", "numpy", 0, steady(100)),
        Row("padata_mp", "padata_mp", "numpy", 2, steady(50)),
        Row("plain", "(0)", "c", 0, steady(40)),
        Row("padata_mp", "padata_mp", "c", 2, steady(25)),
        Row("native", results.NATIVE, "c", 2, steady(24)),
        Row("peer", "Pool.map", "numpy", 2, steady(55)),
    ]
    result = result_of(rows)
    engine_c = result.find("padata_mp", "c", 2)
    assert engine_c.ratios["plain"].value == pytest.approx(40 / 25)
    assert engine_c.ratios["native"].value == pytest.approx(24 / 25)
    assert result.find("padata_mp", "numpy", 2).speedup == pytest.approx(50.0)
    assert result.find("peer", "numpy", 2).ratios["padata_mp"].value == pytest.approx(50 / 55)
    assert result.find("native", "c", 2).ratios["padata_mp"].value == pytest.approx(25 / 24)


def test_json_keeps_every_run_and_refuses_other_schemas(tmp_path):
    result = result_of(
        [Row("plain", "(0)", "numpy", 0, steady(100)), Row("peer", "joblib", "numpy", 1, steady(9))]
    )
    data = json.loads(json.dumps(result.to_json()))
    assert data["schema"] == "padata_mp.bench/2"
    assert data["rows"][0]["times_ms"] == steady(100) and data["peers"][0]["name"] == "joblib"
    again = Result.from_json(data)
    assert [r.key for r in again.all_rows()] == [r.key for r in result.all_rows()]
    with pytest.raises(BadValueError, match=r"schema padata_mp\.bench/2 \(found 'none'\)"):
        Result.from_json({"rows": []})
    del data["rows"][0]["times_ms"]
    with pytest.raises(
        BadValueError, match=r"not a valid padata_mp\.bench/2 result: rows\[0\]\.times_ms must be a list"
    ):
        Result.from_json(data)
    path = tmp_path / "b.json"
    path.write_text("{not json")
    with pytest.raises(BadValueError, match="is not JSON"):
        results.load(str(path))


def test_compare_flags_only_significant_slowdowns_past_the_threshold():
    a = result_of(
        [Row("plain", "(0)", "numpy", 0, steady(100)), Row("padata_mp", "padata_mp", "numpy", 1, steady(50))]
    )
    b = result_of(
        [
            Row("plain", "(0)", "numpy", 0, steady(100.05)),
            Row("padata_mp", "padata_mp", "numpy", 1, steady(60)),
        ]
    )
    comparison = compare.compare(a, b)
    changes = {c.name: c for c in comparison.changes}
    assert changes["(0) (numpy)"].verdict == "same"
    slower = changes["padata_mp (numpy) (1)"]
    assert slower.ratio.value == pytest.approx(1.2) and slower.verdict == "slower"
    assert slower.regressed(10) and not slower.regressed(25)
    assert comparison.regressions(10) == [slower]
    assert "slower (past 10%)" in compare.report(comparison, 10)
    other = result_of([Row("plain", "(0)", "numpy", 0, steady(100))])
    other.pages = 7
    with pytest.raises(BadValueError, match="different work: pages"):
        compare.compare(a, other)


def test_compare_widens_the_verdict_with_noise_and_judges_no_row_of_too_few_runs():
    rng = np.random.default_rng(7)
    wild = list(50 * (1 + rng.uniform(-0.3, 0.3, 9)))
    a = result_of(
        [
            Row("padata_mp", "padata_mp", "numpy", 1, steady(50, 3)),
            Row("padata_mp", "padata_mp", "numpy", 2, wild),
            Row("native", results.NATIVE, "c", 2, steady(20)),
            Row("peer", "Pool.map", "numpy", 2, steady(30)),
        ]
    )
    b = result_of(
        [
            Row("padata_mp", "padata_mp", "numpy", 1, steady(80, 3)),
            Row("padata_mp", "padata_mp", "numpy", 2, [t * 1.5 for t in wild]),
            Row("native", results.NATIVE, "c", 2, steady(30)),
            Row("peer", "joblib", "numpy", 2, steady(30)),
        ]
    )
    comparison = compare.compare(a, b)
    verdicts = {c.name: c.verdict for c in comparison.changes}
    assert verdicts["padata_mp (numpy) (1)"].startswith("too few runs (3")
    assert verdicts["padata_mp (numpy) (2)"] == "slower"  # 1.5x stands out of 30% noise
    assert verdicts[f"{results.NATIVE} (2)"] == "slower"
    assert [c.name for c in comparison.regressions(5)] == ["padata_mp (numpy) (2)"]
    assert [c.name for c in comparison.regressions(5, ("native",))] == [f"{results.NATIVE} (2)"]
    assert [c.name for c in comparison.unsettled(5)] == ["padata_mp (numpy) (1)"]
    assert comparison.only_in_a == ["Pool.map (2)"] and comparison.only_in_b == ["joblib (2)"]
    text = compare.report(comparison, 5)
    assert "gate (padata_mp rows, 5%): 1 of 2 judged, 1 slower" in text
    assert "only in A (not compared): Pool.map (2)" in text and "only in B (not compared): joblib (2)" in text
    assert "A warned: spread over 10%" in text  # each file's own warnings travel with it
    with pytest.raises(BadValueError, match=r"share no configuration: A has Pool\.map"):
        compare.compare(result_of([Row("peer", "Pool.map", "numpy", 2, steady(30))]), b)


@pytest.mark.parametrize("seed", range(10))
def test_compare_passes_the_same_code_and_catches_a_20_percent_slowdown(seed):
    """Runs of a quiet machine (1.5% noise): the same distribution passes a 5% gate, 1.2x the time
    fails it, and only the engine's rows are gated."""
    rng = np.random.default_rng(seed)

    def runs(ms: float) -> list[float]:
        return list(ms * (1 + rng.normal(0, 0.015, 5)))

    a = result_of(
        [Row("padata_mp", "padata_mp", "c", 2, runs(50)), Row("native", results.NATIVE, "c", 2, runs(48))]
    )
    same = result_of(
        [Row("padata_mp", "padata_mp", "c", 2, runs(50)), Row("native", results.NATIVE, "c", 2, runs(55))]
    )
    slower = result_of(
        [Row("padata_mp", "padata_mp", "c", 2, runs(60)), Row("native", results.NATIVE, "c", 2, runs(48))]
    )
    assert compare.compare(a, same).regressions(5) == []
    assert [c.kind for c in compare.compare(a, slower).regressions(5)] == ["padata_mp"]


def test_compare_on_the_command_line(tmp_path):
    a = result_of(
        [Row("plain", "(0)", "numpy", 0, steady(100)), Row("padata_mp", "padata_mp", "numpy", 1, steady(50))]
    )
    b = result_of(
        [Row("plain", "(0)", "numpy", 0, steady(100)), Row("padata_mp", "padata_mp", "numpy", 1, steady(70))]
    )
    for name, result in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps(result.to_json()))

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "padata_mp", "compare", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    same = run(str(tmp_path / "a.json"), str(tmp_path / "a.json"), "--fail-above", "5")
    assert same.returncode == 0 and "| same" in same.stdout and "| slower" not in same.stdout
    assert same.stdout.splitlines()[-1] == "gate (padata_mp rows, 5%): 1 of 1 judged, 0 slower"
    worse = run(str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--fail-above", "5")
    assert worse.returncode == 1 and "slower (past 5%)" in worse.stdout
    assert run(str(tmp_path / "a.json"), str(tmp_path / "b.json")).returncode == 0  # no threshold: a report
    # Too few runs to judge: listed on stderr; --strict fails on it with its own status.
    (tmp_path / "few.json").write_text(
        json.dumps(result_of([Row("padata_mp", "padata_mp", "numpy", 1, steady(50, 3))]).to_json())
    )
    lax = run(str(tmp_path / "few.json"), str(tmp_path / "few.json"), "--fail-above", "5")
    assert lax.returncode == 0 and lax.stderr.startswith("padata-mp: not judged: padata_mp (numpy) (1)")
    assert lax.stdout.splitlines()[-1] == "gate (padata_mp rows, 5%): 0 of 1 judged, 0 slower"
    strict = run(str(tmp_path / "few.json"), str(tmp_path / "few.json"), "--fail-above", "5", "--strict")
    assert strict.returncode == 3
    alone = run(str(tmp_path / "few.json"), str(tmp_path / "few.json"), "--strict")
    assert alone.returncode == 2 and "--strict goes with --fail-above" in alone.stderr
    # A result of the first schema (no "schema" field) is refused in one line.
    (tmp_path / "v1.json").write_text(
        json.dumps({"config": {"job": "init"}, "rows": [], "deferred_pages": 1})
    )
    old = run(str(tmp_path / "v1.json"), str(tmp_path / "a.json"))
    assert old.returncode == 2 and old.stderr.count("\n") == 1 and "schema" in old.stderr
    native = run(str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--fail-above", "5", "--rows", "native")
    assert native.returncode == 0  # no native row in either file was slower
    bad = run(str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--rows", "engine")
    assert bad.returncode == 2 and "expected 'all' or a list of plain" in bad.stderr


def good_result() -> dict:
    rows = [
        Row("plain", "(0)", "numpy", 0, steady(100)),
        Row("padata_mp", "padata_mp", "numpy", 1, steady(50)),
    ]
    return json.loads(json.dumps(result_of(rows).to_json()))


def broken(change) -> dict:
    data = good_result()
    change(data)
    return data


MALFORMED = {
    "times empty": broken(lambda d: d["rows"][0].update(times_ms=[])),
    "times strings": broken(lambda d: d["rows"][0].update(times_ms=["1", "2"])),
    "times null": broken(lambda d: d["rows"][0].update(times_ms=None)),
    "a time null": broken(lambda d: d["rows"][0].update(times_ms=[1.0, None])),
    "a time zero": broken(lambda d: d["rows"][0].update(times_ms=[0.0, 1.0])),
    "a time negative": broken(lambda d: d["rows"][0].update(times_ms=[-1.0, 1.0])),
    "a time bool": broken(lambda d: d["rows"][0].update(times_ms=[True])),
    "a time nan": broken(lambda d: d["rows"][0].update(times_ms=[float("nan")])),
    "a time inf": broken(lambda d: d["rows"][0].update(times_ms=[float("inf")])),
    "threads unhashable": broken(lambda d: d["rows"][0].update(threads=[1])),
    "threads negative": broken(lambda d: d["rows"][0].update(threads=-1)),
    "threads bool": broken(lambda d: d["rows"][0].update(threads=True)),
    "kind unknown": broken(lambda d: d["rows"][0].update(kind="gpu")),
    "name missing": broken(lambda d: d["rows"][0].pop("name")),
    "a row not an object": broken(lambda d: d["rows"].append(3)),
    "rows an object": broken(lambda d: d.update(rows={"a": 1})),
    "a row twice": broken(lambda d: d["rows"].append(d["rows"][0])),
    "config without job": broken(lambda d: d["config"].pop("job")),
    "config a list": broken(lambda d: d.update(config=[])),
    "machine a list": broken(lambda d: d.update(machine=[])),
    "git_commit an int": broken(lambda d: d["machine"].update(git_commit=5)),
    "pages a string": broken(lambda d: d.update(pages="many")),
    "warnings a string": broken(lambda d: d.update(warnings="noisy")),
    "skipped missing": broken(lambda d: d.pop("skipped")),
    "argv of ints": broken(lambda d: d.update(argv=[1, 2])),
    "created an int": broken(lambda d: d.update(created=2026)),
    "a list": [1, 2, 3],
    "a string": "padata",
}


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_result_is_one_line_and_exit_2(tmp_path, capsys, name):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(MALFORMED[name]))
    (tmp_path / "good.json").write_text(json.dumps(good_result()))
    assert command_line.main(["compare", str(path), str(tmp_path / "good.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.json" in err, err


@pytest.mark.parametrize(
    "content",
    [b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe not text", b"", b'{"schema": "padata_mp.bench/2"'],
    ids=["deep nesting", "not utf-8", "empty", "cut short"],
)
def test_a_file_that_is_not_a_result_is_one_line_and_exit_2(tmp_path, capsys, content):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    assert command_line.main(["compare", str(path), str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_compare_reads_a_bounded_amount(tmp_path, capsys):
    """/dev/zero, or a row of more runs than any bench makes, is refused without being read whole."""
    assert command_line.main(["compare", "/dev/zero", "/dev/zero"]) == 2
    assert "over 16 MiB" in capsys.readouterr().err
    data = good_result()
    data["rows"][0]["times_ms"] = [1.0] * (results.MAX_RUNS + 1)
    (tmp_path / "many.json").write_text(json.dumps(data))
    assert command_line.main(["compare", str(tmp_path / "many.json"), str(tmp_path / "many.json")]) == 2
    assert "1 to 10000 times" in capsys.readouterr().err


@needs_c
def test_every_kernel_writes_the_same_words(engine):
    """Every word of the memmap, the pageblocks, the records and the zones, with holes inside and
    across sections and pieces cut short, on two nodes: numpy's, c and c-stream alike."""
    holes = [(600_000, 700_000), (800_001, 800_100), (1_200_003, 1_300_000)]
    words = {}
    for kernel in KERNELS:
        with Machine.create("6G", 2, holes=holes) as machine:
            engine.attach(*machine.shared_arrays)
            deferred_init(machine, engine, kernel=kernel)
            machine.verify()
            words[kernel] = [*(a.array.copy() for a in machine.shared_arrays), machine.zones.copy()]
    for kernel in ("c", "c-stream"):
        for numpy_words, c_words in zip(words["numpy"], words[kernel], strict=True):
            assert np.array_equal(numpy_words, c_words), kernel


@needs_c
def test_every_pmem_kernel_writes_the_same_words(engine):
    words = {}
    for kernel in KERNELS:
        with DeviceMemory("1G", node=0) as device:
            memmap_init_zone_device(device, engine, kernel=kernel)
            device.verify()
            words[kernel] = [a.array.copy() for a in device.shared_arrays]
    for kernel in ("c", "c-stream"):
        for numpy_words, c_words in zip(words["numpy"], words[kernel], strict=True):
            assert np.array_equal(numpy_words, c_words), kernel


@needs_c
def test_the_c_kernels_refuse_what_numpy_refuses_and_never_write_outside_the_blocks(engine):
    from dataclasses import replace

    from padata_mp.mm import init_chunk, init_chunk_c
    from padata_mp.mm.deferred import zone_job
    from padata_mp.mm.pmem import DeviceJob, init_device_chunk, init_device_chunk_c
    from padata_mp.native import load

    with Machine.create("5G", 1) as machine:
        zone = machine.nodes[0].highest_zone
        for thread_fn, compiled in (
            (init_chunk, None),
            (init_chunk_c, check_kernel("c")),
            (init_chunk_c, check_kernel("c-stream")),
        ):
            job = zone_job(machine, zone, compiled)
            with pytest.raises(ValueError, match="whole sections"):
                thread_fn(zone.first_deferred_pfn + 1, zone.end_pfn, job)
            past = replace(job, end_pfn=machine.total_pages + (1 << 20))  # a zone past the machine's end
            with pytest.raises(ValueError, match="outside the machine"):
                thread_fn(zone.end_pfn - zone.end_pfn % (1 << 15), past.end_pfn, past)
        # The library checks again, for callers that skip Python's check.
        memmap, pageblocks, records = (a.array for a in machine.shared_arrays)
        lib = load(check_kernel("c").library)
        args = (memmap.ctypes.data, len(memmap), pageblocks.ctypes.data, records.ctypes.data)
        assert lib.padata_init_chunk(*args, 0, 1 << 15, len(memmap) + 1, 0, None, 0, 1) == -22
        assert lib.padata_init_chunk(*args, -(1 << 15), 0, len(memmap), 0, None, 0, 0) == -22
    with DeviceMemory("256M") as device:
        for thread_fn, compiled in (
            (init_device_chunk, None),
            (init_device_chunk_c, check_kernel("c-stream")),
        ):
            job = DeviceJob(*device.shared_arrays, device.start_pfn, 0, compiled)
            with pytest.raises(ValueError, match="outside the device"):
                thread_fn(device.start_pfn, device.start_pfn + device.pages + 1, job)


def test_a_kernel_is_named_and_checked_before_any_work():
    with Machine.create("5G", 1) as machine:
        with pytest.raises(BadValueError, match="kernel must be one of auto, numpy, c, c-stream"):
            deferred_init(machine, kernel="fortran")
        assert not machine.initialised


def test_without_a_compiler_the_c_kernel_says_why(tmp_path):
    code = (
        "from padata_mp.mm import Machine, deferred_init\n"
        "from padata_mp import PadataError\n"
        "with Machine.create('5G', 1) as m:\n"
        "    try:\n"
        "        deferred_init(m, kernel='c')\n"
        "    except PadataError as e:\n"
        "        print(e)\n"
    )
    env = {"PATH": "/nonexistent", "CC": "no-such-cc", "XDG_CACHE_HOME": str(tmp_path), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.strip() == "the C kernel is not available: no C compiler (set CC, or install gcc)", out
    bench = subprocess.run(
        [sys.executable, "-m", "padata_mp", "bench", "--kernel", "c", "--mem", "5G"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert bench.returncode == 1 and bench.stderr.splitlines() == [
        "padata-mp: the C kernel is not available: no C compiler (set CC, or install gcc)"
    ]


@needs_c
def test_native_code_is_built_once_per_source_into_the_cache(tmp_path, monkeypatch):
    """From the package's own files (importlib.resources), so it works from an installed wheel;
    the file's name carries the source's hash, and a second build reuses it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    build.cache_clear()
    try:
        first = build("program")
        assert first.path.parent == tmp_path / "padata_mp" and first.path.name.startswith(
            "deferred_init-program-"
        )
        stamp = first.path.stat().st_mtime_ns
        build.cache_clear()
        assert build("program").path == first.path and first.path.stat().st_mtime_ns == stamp
        assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # no temporary left
    finally:
        build.cache_clear()


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """An empty cache of built code, and build()'s per-process memory of it cleared around."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    build.cache_clear()
    yield tmp_path / "padata_mp"
    build.cache_clear()


@needs_c
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_cached_library_is_built_again(own_cache, damage):
    """A library that would not load (or would kill the process loading it) is never used: the
    check runs in a child process, and the file is built again."""
    first = build("library").path
    data = first.read_bytes()
    first.write_bytes(b"not an ELF file" * 100 if damage == "garbage" else data[: len(data) // 3])
    build.cache_clear()
    again = build("library")
    assert again.path == first and first.read_bytes() != b"not an ELF file" * 100
    assert subprocess.run([sys.executable, "-c", native_check, str(again.path)], timeout=60).returncode == 0


native_check = "import ctypes, sys; sys.exit(ctypes.CDLL(sys.argv[1]).padata_self_test())"


def fake_compiler(tmp_path, body: str) -> str:
    """A compiler that answers --version and -dumpmachine, and does ``body`` when asked to build."""
    script = tmp_path / "fake-cc"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in --version) echo fake-cc 1.0; exit 0;; -dumpmachine) echo x86_64; exit 0;; esac\n'
        f"{body}\n"
    )
    script.chmod(0o755)
    return str(script)


def test_a_compiler_that_writes_junk_poisons_nothing(own_cache, tmp_path, monkeypatch):
    """It exits 0 but its output fails the self-test: reported, not cached."""
    junk = 'while [ "$1" != -o ]; do shift; done; echo junk > "$2"; chmod +x "$2"; exit 0'
    monkeypatch.setenv("CC", fake_compiler(tmp_path, junk))
    for kind in ("library", "program"):
        built = build(kind)
        assert built.path is None and "fails its self-test" in built.why, built
    assert not own_cache.exists() or list(own_cache.iterdir()) == []


def test_an_interrupt_while_a_probe_runs_is_raised_even_once_the_probe_is_gone():
    """The child interrupts its parent and exits at once: communicate() reaps it on the way out,
    and the KeyboardInterrupt (SIGTERM's too, in padata-mp) still reaches the caller."""
    code = (
        "import sys\n"
        "from padata_mp import native\n"
        "child = 'import os, signal; os.kill(os.getppid(), signal.SIGINT)'\n"
        "try:\n"
        "    native._run([sys.executable, '-c', child], 30)\n"
        "except KeyboardInterrupt:\n"
        "    print('KeyboardInterrupt')\n"
        "except BaseException as exc:\n"
        "    print(type(exc).__name__)\n"
        "else:\n"
        "    print('lost')\n"
    )
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "KeyboardInterrupt", (out.stdout, out.stderr)


def alive_with(marker: str) -> list[psutil.Process]:
    """Processes whose command line holds ``marker``, less the dead: a killed orphan stays a zombie
    until its new parent reaps it."""
    found = psutil.process_iter(["cmdline", "status"])
    return [
        p
        for p in found
        if marker in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


def test_a_compiler_that_hangs_is_stopped_with_its_children(own_cache, tmp_path, monkeypatch):
    from padata_mp import native

    marker = f"padata-hang-{os.getpid()}"
    monkeypatch.setenv("CC", fake_compiler(tmp_path, f"sh -c 'sleep 300; : {marker}' & wait"))
    monkeypatch.setattr(native, "BUILD_TIMEOUT_S", 1.0)
    built = build("library")
    assert built.path is None and "took over 1 s" in built.why
    assert alive_with(marker) == []  # the compiler's own children went with it


def test_a_compiler_whose_version_probe_hangs_is_stopped_with_its_children(own_cache, tmp_path, monkeypatch):
    from padata_mp import native

    marker = f"padata-probe-{os.getpid()}"
    script = tmp_path / "probe-cc"
    script.write_text(f"#!/bin/sh\nsh -c 'sleep 300; : {marker}' & wait\n")
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    monkeypatch.setattr(native, "CHECK_TIMEOUT_S", 1.0)
    native._identity.cache_clear()
    try:
        built = build("library")
    finally:
        native._identity.cache_clear()
    assert built.path is None and "does not run" in built.why, built
    assert alive_with(marker) == []  # the probe's own children went with it


@needs_c
def test_a_ceiling_pass_stores_over_the_whole_block():
    from padata_mp import Padata, SharedArray
    from padata_mp.bench.native import ceiling_kinds, store_ms

    library = build("library").path
    with SharedArray.create(1 << 20, np.uint64) as block, Padata(2) as engine:
        for how in ceiling_kinds(library):
            block.array[:] = 0
            assert store_ms(library, engine, block, 2, how) > 0
            assert (block.array == 0x5A5A5A5A5A5A5A5A).all()
        block.array[:] = 0
        assert store_ms(None, engine, block, 2, "fill") > 0  # numpy through the engine
        assert (block.array == 0x5A5A5A5A5A5A5A5A).all()


def test_bench_kernel_numpy_measures_numpy_alone():
    shm = OwnShm()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "padata_mp",
            "bench",
            "--mem",
            "5G",
            "--threads",
            "1",
            "--repeat",
            "1",
            "--kernel",
            "numpy",
            "--no-native",
            "--json",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {r["kernel"] for r in data["rows"]} == {"numpy"} and not data["native"]
    assert shm.left() == set()


def test_too_few_runs_are_never_significant():
    assert not ratio([10.0], [5.0]).significant  # one run each: a resampled interval of one point
    assert not ratio([10.0, 10.1], [5.0, 5.1]).significant
    assert ratio([10.0, 10.1, 10.2], [5.0, 5.1, 5.2]).significant


def test_an_interval_across_the_threshold_is_inconclusive_and_says_what_would_settle_it():
    rng = np.random.default_rng(3)
    a = result_of([Row("padata_mp", "padata_mp", "c", 2, list(50 * (1 + rng.uniform(-0.3, 0.3, 5))))])
    b = result_of([Row("padata_mp", "padata_mp", "c", 2, list(53 * (1 + rng.uniform(-0.3, 0.3, 5))))])
    (change,) = compare.compare(a, b).changes
    assert change.verdict == "inconclusive" and MIN_RUNS < change.runs_to_settle() <= compare.MOST_RUNS
    assert "runs a side would settle it" in compare.report(compare.compare(a, b), 5)
    quiet = result_of([Row("padata_mp", "padata_mp", "c", 2, steady(50))])
    assert compare.compare(quiet, quiet).changes[0].verdict == "same"


def test_compare_of_ten_thousand_runs_a_row_is_quick(tmp_path):
    """Bounded work for any valid input: the binomial tail and the bootstrap cost the same at 10
    runs a row or 10,000 (a slow compare is caught by the suite's own timeout, not timed here)."""
    rng = np.random.default_rng(0)
    rows = [
        Row("padata_mp", "padata_mp", "c", t, list(50 * (1 + rng.normal(0, 0.05, 10_000)))) for t in (1, 2)
    ]
    comparison = compare.compare(result_of(rows), result_of(rows))
    assert [c.verdict for c in comparison.changes] == ["same", "same"]


def test_the_ceiling_is_rows_and_a_share_of_ceiling_divides_medians():
    """2^20 pages of 64 bytes (64 MiB) stored: the ceiling's GB/s is the block over its median time,
    and a row's % of ceiling is its GB/s over that median, the non-temporal one preferred."""
    stored = 64 << 20
    ceiling_ms = [stored / 20e9 * 1e3] * 4 + [stored / 40e9 * 1e3] * 5  # two modes: 20 and 40 GB/s
    rows = [
        Row("plain", "(0)", "numpy", 0, steady(10)),
        Row("padata_mp", "padata_mp", "c", 2, steady(4)),
        Row("ceiling", results.CEILING, "plain", 2, steady(stored / 10e9 * 1e3)),
        Row("ceiling", results.CEILING, "nontemporal", 2, ceiling_ms),
    ]
    result = result_of(rows)
    result.machine["memmap_bytes"] = stored
    result.finish()
    limit = result.find("ceiling", "nontemporal", 2)
    assert limit.gbps == pytest.approx(40e9 / 1e9, rel=0.01)  # the median: the fast mode's
    assert result.ceiling[2] == {"plain": pytest.approx(10.0, rel=0.01), "nontemporal": limit.gbps}
    engine = result.find("padata_mp", "c", 2)
    assert engine.ceiling_fraction == pytest.approx(engine.gbps / limit.gbps)
    (modal,) = [w for w in result.warnings if "two modes" in w]
    assert "store ceiling, nontemporal (2) 20.0 and 40.0 GB/s" in modal
    data = json.loads(json.dumps(result.to_json()))
    again = Result.from_json(data)
    again.machine["memmap_bytes"] = stored
    again.finish()
    assert [r.key for r in again.ceilings] == [r.key for r in result.ceilings]
    assert again.find("padata_mp", "c", 2).ceiling_fraction == pytest.approx(engine.ceiling_fraction)
