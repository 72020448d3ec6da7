"""The C code shipped with the package (``deferred_init.c``), compiled on first use.

One source, built two ways: a shared library (the C chunk kernel of deferred init, and the store
ceiling) loaded with ctypes, and the native reference program.  Each is compiled once per version
of the source into the user's cache (``$XDG_CACHE_HOME/padata_mp``, else ``~/.cache/padata_mp``),
with an atomic rename, so runs at once are safe.  Nothing here is needed by the engine: without a
compiler, what needs it is skipped and says why.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.resources
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE = "deferred_init.c"
# What each build adds to the compiler's command line, and how the built file is named.
BUILDS = {
    "library": (["-shared", "-fPIC"], ".so"),
    "program": (["-DDEFERRED_INIT_MAIN"], ""),
}


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
    """The ``kind`` ("library" or "program") of the shipped source, compiled once per version of
    the source (its hash names the file) and reused after; a failed build is tried once per
    process and says why."""
    flags, suffix = BUILDS[kind]
    code = importlib.resources.files(__name__).joinpath(SOURCE).read_bytes()
    cc = compiler()
    if cc is None:
        return Built(None, "no C compiler (set CC, or install gcc)")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "padata_mp"
    target = cache / f"{Path(SOURCE).stem}-{kind}-{hashlib.sha256(code).hexdigest()[:16]}{suffix}"
    if target.exists():
        return Built(target)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as work:
            source, out = Path(work) / SOURCE, Path(work) / f"out{suffix}"
            source.write_bytes(code)
            made = subprocess.run(
                [cc, "-O2", "-pthread", *flags, "-o", str(out), str(source)], capture_output=True, text=True
            )
            if made.returncode != 0:
                why = (made.stderr.strip().splitlines() or [f"exit status {made.returncode}"])[-1]
                return Built(None, f"{cc} failed: {why}")
            os.replace(out, target)
    except OSError as exc:
        return Built(None, f"cannot build in {cache}: {exc.strerror or exc}")
    return Built(target)


@functools.cache
def load(path: str) -> ctypes.CDLL:
    """The built library at ``path``, its functions typed; loaded once per process."""
    lib = ctypes.CDLL(path)
    p, long, u64 = ctypes.c_void_p, ctypes.c_long, ctypes.c_uint64
    lib.padata_init_chunk.argtypes = [p, p, p, long, long, long, u64, p, long]
    lib.padata_init_chunk.restype = ctypes.c_int
    lib.padata_store_best_ns.argtypes = [p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.padata_store_best_ns.restype = u64
    lib.padata_has_nontemporal.restype = ctypes.c_int
    return lib
