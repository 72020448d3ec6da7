"""The C code shipped with the package (``deferred_init.c``), compiled on first use.

One source, built two ways: a shared library (the C chunk kernels of deferred init and pmem init,
and the store ceiling) loaded with ctypes, and the native reference program.  Each is compiled
into the user's cache (``$XDG_CACHE_HOME/padata_mp``, else ``~/.cache/padata_mp``) under a name
keyed on everything that makes the file: the source, the compiler (its path, version and target)
and the flags.  A build is checked before it is renamed into place (atomically, so runs at once are
safe): it must load and pass its self-test, in a child process, so a broken file can never crash
this one.  A cached file is checked the same way once per process; one that fails is built again
once, then reported.  Nothing here is needed by the engine: without a compiler, what needs it is
skipped and says why.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.resources
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE = "deferred_init.c"
FLAGS = ["-O2", "-pthread"]
# What each build adds to the compiler's command line, and how the built file is named.
BUILDS = {
    "library": (["-shared", "-fPIC"], ".so"),
    "program": (["-DDEFERRED_INIT_MAIN"], ""),
}
BUILD_TIMEOUT_S = 120.0  # a compiler that hangs is killed, with its children, after this
CHECK_TIMEOUT_S = 30.0  # loading a build and running its self-test
# The library's self-test, run where a crash cannot reach the caller.
_LIBRARY_CHECK = "import ctypes, sys; sys.exit(ctypes.CDLL(sys.argv[1]).padata_self_test() and 3)"


@dataclass(frozen=True)
class Built:
    """A build's outcome: the file, or None and ``why`` in one line (no compiler, or its error)."""

    path: Path | None
    why: str = ""


def compiler() -> str | None:
    """``$CC`` (default ``cc``) where it is found, else gcc or clang; None when there is none."""
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


@functools.cache
def build(kind: str) -> Built:
    """The ``kind`` ("library" or "program") of the shipped source, from the cache when a sound
    one is there, else compiled now; a failed build is tried once per process and says why."""
    cc = compiler()
    if cc is None:
        return Built(None, "no C compiler (set CC, or install gcc)")
    flags, suffix = BUILDS[kind]
    code = importlib.resources.files(__name__).joinpath(SOURCE).read_bytes()
    try:
        identity = _identity(cc)
    except (OSError, subprocess.SubprocessError) as exc:
        return Built(None, f"{cc} does not run: {exc}")
    key = hashlib.sha256(b"\0".join([code, identity, " ".join(FLAGS + flags).encode()])).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "padata_mp"
    target = cache / f"{Path(SOURCE).stem}-{kind}-{key}{suffix}"
    if target.exists() and not _check(kind, target):
        return Built(target)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as work:
            source, out = Path(work) / SOURCE, Path(work) / f"out{suffix}"
            source.write_bytes(code)
            why = _compile([cc, *FLAGS, *flags, "-o", str(out), str(source)]) or _check(kind, out)
            if why:
                return Built(None, f"{cc} {why}")
            os.replace(out, target)  # over a cached file that failed its check, if there was one
    except OSError as exc:
        return Built(None, f"cannot build in {cache}: {exc.strerror or exc}")
    return Built(target)


@functools.cache
def _identity(cc: str) -> bytes:
    """What names the compiler's output: its real path, its version and its target."""
    lines = [os.path.realpath(cc).encode()]
    for option in ("--version", "-dumpmachine"):
        lines.append(_run([cc, option], CHECK_TIMEOUT_S).stdout)
    return b"\n".join(lines)


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    """Run ``command`` in its own process group, bounded.  On a timeout (TimeoutExpired) or an
    interrupt (Ctrl-C, SIGTERM) the whole group is killed first, so nothing it started is left."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    ) as made:
        try:
            out, err = made.communicate(timeout=timeout)
        except BaseException:
            # communicate() may have reaped it already (it waits a moment on a KeyboardInterrupt):
            # with nothing left in its group, ESRCH must not replace the interrupt on its way out.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(made.pid, signal.SIGKILL)
            made.wait()
            raise
    return subprocess.CompletedProcess(command, made.returncode, out, err)


def _last_line(ran: subprocess.CompletedProcess[bytes]) -> str:
    return (ran.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {ran.returncode}"])[-1]


def _compile(command: list[str]) -> str:
    """Run the compiler (``_run``): why it failed, empty when it did not."""
    try:
        ran = _run(command, BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"took over {BUILD_TIMEOUT_S:g} s and was stopped"
    return f"failed: {_last_line(ran)}" if ran.returncode else ""


def _check(kind: str, path: Path) -> str:
    """Why the built file is unsound; empty when it loads and passes its self-test (run in a
    child process)."""
    command = (
        [str(path), "--self-test"] if kind == "program" else [sys.executable, "-c", _LIBRARY_CHECK, str(path)]
    )
    try:
        ran = _run(command, CHECK_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"built a {kind} that fails its self-test: {exc}"
    return f"built a {kind} that fails its self-test: {_last_line(ran)}" if ran.returncode else ""


@functools.cache
def load(path: str) -> ctypes.CDLL:
    """The built library at ``path``, its functions typed; loaded once per process."""
    lib = ctypes.CDLL(path)
    p, long, u64, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_uint64, ctypes.c_int
    lib.padata_init_chunk.argtypes = [p, long, p, p, long, long, long, u64, p, long, i]
    lib.padata_init_chunk.restype = i
    lib.padata_device_chunk.argtypes = [p, long, p, long, long, p, i]
    lib.padata_device_chunk.restype = i
    lib.padata_store_best_ns.argtypes = [p, ctypes.c_size_t, i, i, i]
    lib.padata_store_best_ns.restype = u64
    lib.padata_stream_width.restype = i
    return lib


def stream_width(path: str) -> int:
    """The bytes of each non-temporal store the library at ``path`` uses on this CPU (64, 32 or
    8); 0 where the CPU has none, and the streaming kernels store plainly."""
    return int(load(path).padata_stream_width())
