"""Edges a user hits: one validation rule for every argument, one line and exit status 2 for every
bad command line, the README's examples as they are written."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import padata_mp
from padata_mp import BadTypeError, BadValueError, MtJob, Padata, SharedArray
from padata_mp import cli as command_line
from padata_mp.mm import Machine, VerifyError, parse_size
from tests import fns
from tests.conftest import OwnShm
from tests.test_cli import cli as run_cli

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: MtJob(fns.nothing, None, 0, 10, retry="no"), BadTypeError),
        (lambda: MtJob(fns.nothing, None, 0, 10, numa_aware="no"), BadTypeError),
        (lambda: MtJob(fns.nothing, None, 0, 10, numa_aware=None), BadTypeError),
        (lambda: MtJob(fns.nothing, None, 0, 10, numa_aware=2), BadTypeError),
        (lambda: MtJob(fns.nothing, None, 0, True), BadTypeError),
        (lambda: MtJob(fns.nothing, None, 0, 10.0), BadTypeError),
        (lambda: MtJob(fns.nothing, None, -1, 10), BadValueError),
        (lambda: Padata(workers=True), BadTypeError),
        (lambda: Padata(1, load_balance_factor=True), BadTypeError),
        (lambda: Machine.create("4G", nodes=True), BadTypeError),
        (lambda: Machine.create("4G", holes=[(1.5, 10)]), BadTypeError),
        (lambda: Machine.create("4G", holes=[("3", "10")]), BadTypeError),
        (lambda: parse_size("4097"), BadValueError),
        (lambda: parse_size(True), BadTypeError),
        (lambda: parse_size("1099511627776T"), BadValueError),
        (lambda: SharedArray.create((True, 2)), BadTypeError),
    ],
)
def test_one_rule_for_every_argument(make, error):
    with pytest.raises(error) as info:
        make()
    assert isinstance(info.value, ValueError if error is BadValueError else TypeError)


def test_numpy_integers_are_integers(engine, counts):
    job = MtJob(
        fns.count, counts, np.int64(0), np.uint32(1 << 20), align=np.int16(1024), max_threads=np.int8(2)
    )
    assert type(job.size) is int and type(job.align) is int
    engine.do_multithreaded(job, node=np.int64(engine.topology.nodes_with_cpus[0].id))
    assert (counts.array == 1).all()
    with Machine.create("4G", nodes=np.int64(1), holes=[(np.int64(70_000), np.int32(70_010))]) as m:
        assert len(m.nodes) == 1 and m.holes == ((70_000, 70_010),)
    with pytest.raises(BadTypeError):
        engine.submit(job, node=False)


def test_a_block_too_big_leaves_nothing_behind():
    shm = OwnShm()
    with pytest.raises(padata_mp.ShmSpaceError):
        SharedArray.create((2**62, 2), np.int64)  # 2**66 bytes: no int64 wrap to a small block
    assert shm.left() == set()


@pytest.mark.parametrize(
    "args",
    [
        ["init", "--mem", "1099511627776T"],
        ["init", "--mem", "4294967296T"],
        ["init", "--mem", "4097"],
        ["topology", "--sysfs", "/etc/passwd"],
        ["topology", "--sysfs", "/nonexistent"],
        ["bench", "--json", "/proc/version"],
    ],
)
def test_more_bad_command_lines_exit_2_with_one_line(args):
    shm = OwnShm()
    out = run_cli(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("padata-mp: error:"), (
        out.stderr
    )
    assert shm.left(out.pid) == set()


def test_a_failing_compiler_is_one_line_and_the_run_goes_on(tmp_path):
    env_cc = {"CC": "/bin/false", "XDG_CACHE_HOME": str(tmp_path)}  # a fresh cache: it must compile
    out = subprocess.run(
        [sys.executable, "-m", "padata_mp", "bench", "--mem", "4G", "--threads", "1", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env_cc},
    )
    assert out.returncode == 0, out.stderr
    for skipped in ("C kernel rows", "native ceiling", "native reference"):
        assert f"{skipped} skipped" in out.stderr and "/bin/false failed" in out.stderr
    assert "Traceback" not in out.stderr and "(0)" in out.stdout
    assert "| c      |" not in out.stdout and "native (C" not in out.stdout


def test_json_dash_is_standard_output():
    out = run_cli("bench", "--mem", "4G", "--threads", "1", "--repeat", "1", "--no-native", "--json", "-")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rows"]  # stdout is the JSON alone
    assert "(0)" in out.stderr  # the table went to stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("delay", [0.15, 0.3, 0.6])
def test_an_interrupt_while_starting_up_is_one_line(sig, delay):
    """While Python imports numpy and the engine (the first few tenths of a second), as later."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "padata_mp", "init", "--mem", "32G", "--verify"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    time.sleep(delay)
    os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "padata-mp: interrupted, cleaned up\n", (proc.returncode, err)


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"padata-mp {padata_mp.__version__}"


def test_a_failed_proof_is_exit_1_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    def failing_verify(self):
        raise VerifyError("pfn 7: flags is 0x0, a free page has 0x1", pfn=7)

    monkeypatch.setattr(Machine, "verify", failing_verify)
    assert command_line.main(["init", "--mem", "4G", "--verify"]) == 1
    err = capsys.readouterr().err
    assert err == "padata-mp: pfn 7: flags is 0x0, a free page has 0x1\n"

    def buggy(*args, **kwargs):
        raise TypeError("an internal mistake")

    monkeypatch.setattr("padata_mp.mm.deferred_init", buggy)
    with pytest.raises(TypeError, match="internal mistake"):
        command_line.main(["init", "--mem", "4G"])


def readme_examples():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


@pytest.mark.parametrize("how", ["file", "python -c", "stdin"])
@pytest.mark.parametrize("index", range(len(readme_examples())))
def test_every_readme_example_runs_as_a_file_typed_into_python_c_and_fed_on_stdin(tmp_path, index, how):
    code = textwrap.dedent(readme_examples()[index])
    script = tmp_path / f"example_{index}.py"
    script.write_text(code)
    shm = OwnShm()
    command = {
        "file": [sys.executable, str(script)],
        "python -c": [sys.executable, "-c", code],
        "stdin": [sys.executable, "-"],  # python - <<'EOF', as CI jobs and docs do
    }[how]
    with subprocess.Popen(
        command,
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        out, err = proc.communicate(code if how == "stdin" else "", timeout=300)
    assert proc.returncode == 0, err
    assert err == "", err
    assert len(out.splitlines()) < 20, out  # an example prints a few lines, never a flood
    assert shm.left(proc.pid) == set()


def test_the_wheel_holds_every_subpackage_and_the_c_source():
    """pyproject lists the packages by name: a subpackage missing there is missing from a wheel."""
    import tomllib
    from pathlib import Path

    top = Path(__file__).resolve().parents[1]
    config = tomllib.loads((top / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(top).parts) for p in (top / "padata_mp").rglob("__init__.py")}
    assert set(config["packages"]) == found
    assert config["package-data"]["padata_mp.native"] == ["*.c"]


def test_a_full_dev_shm_is_a_clear_error_and_the_engine_still_starts(tmp_path):
    """In a mount namespace of its own, over a /dev/shm that is full: the engine needs no named
    semaphores there, and a block that does not fit is a ShmSpaceError, not a crash."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root to mount a full /dev/shm of its own")
    code = (
        "import numpy as np\n"
        "from padata_mp import MtJob, Padata, SharedArray, ShmSpaceError\n"
        "from tests import fns\n"
        "if __name__ == '__main__':\n"
        "    with Padata(2) as engine:\n"
        "        engine.do_multithreaded(MtJob(fns.nothing, None, 0, 64, max_threads=2))\n"
        "        try:\n"
        "            SharedArray.create(1 << 20, np.int64)\n"
        "        except ShmSpaceError as exc:\n"
        "            print('ShmSpaceError', exc)\n"
    )
    (tmp_path / "full.py").write_text(code)
    shell = (
        "mount -t tmpfs -o size=256k tmpfs /dev/shm || exit 77; "
        "head -c 262144 /dev/zero > /dev/shm/filler 2>/dev/null; "
        f"PYTHONPATH={os.getcwd()} exec {sys.executable} {tmp_path / 'full.py'}"
    )
    out = subprocess.run(
        ["unshare", "--mount", "sh", "-c", shell], capture_output=True, text=True, timeout=120
    )
    if out.returncode == 77 or "unshare failed" in out.stderr:
        pytest.skip(f"cannot mount a /dev/shm of its own here: {out.stderr.strip()}")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.startswith("ShmSpaceError"), out.stdout


def test_the_c_kernel_refuses_the_blocks_of_another_machine():
    """A ZoneJob whose records come from a smaller machine: a clear error, never a segfault (run
    in a child, so that a crash would fail this test, not end the run)."""
    code = (
        "from dataclasses import replace\n"
        "from padata_mp.mm import Machine\n"
        "from padata_mp.mm.deferred import init_chunk, init_chunk_c, zone_job\n"
        "from padata_mp.mm.kernels import check_kernel\n"
        "from padata_mp import native\n"
        "with Machine.create('8G') as big, Machine.create('5G') as small:\n"
        "    zone = big.nodes[0].highest_zone\n"
        "    compiled = check_kernel('c') if native.build('library').path else None\n"
        "    job = replace(zone_job(big, zone, compiled), records=small.shared_arrays[2])\n"
        "    start = zone.end_pfn - 32768\n"
        "    for fn in [init_chunk] + ([init_chunk_c] if compiled else []):\n"
        "        try:\n"
        "            fn(start, zone.end_pfn, job)\n"
        "        except ValueError as exc:\n"
        "            print('ValueError', 'another machine' in str(exc))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines and set(lines) == {"ValueError True"}, out.stdout


def test_topology_of_a_folder_that_is_no_sysfs_is_one_line(tmp_path):
    out = run_cli("topology", "--sysfs", str(tmp_path))
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1 and "no sysfs" in out.stderr, out.stderr
