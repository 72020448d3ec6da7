"""Numpy arrays in POSIX shared memory that worker processes attach to once and keep.

The creator owns a block and is the only one to unlink it.  Every other process attaches on first
use, pre-faults the whole mapping once (a child does not inherit the parent's page tables for a
shared mapping, and with dynamic claiming any worker may get any chunk), and keeps it until the
block is unlinked.  Space is reserved with fallocate at creation, so a full /dev/shm is a Python
exception there instead of a SIGBUS at some later first write (cpython #114390).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import math
import os
import secrets
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Self, SupportsIndex

import numpy as np
import psutil
from numpy.typing import DTypeLike

from .checks import integer
from .errors import ShmSpaceError
from .interrupts import deferred_interrupts
from .ranges import roundup
from .topology import bind_memory

SHM_DIR = "/dev/shm"
# Block names carry the creator's pid, so blocks left by a creator that was SIGKILLed can be swept.
PREFIX = "padata_mp_"
MADV_POPULATE_WRITE = 23  # Linux >= 5.14
# Long system calls go in pieces of this size, so Ctrl-C is seen between them within a second.
PIECE_BYTES = 256 << 20

# name -> (block, array) for every block this process has mapped, created or attached.
_mapped: dict[str, tuple[SharedMemory, np.ndarray]] = {}
_mapped_lock = threading.Lock()
# Called with a block's name after its creator unlinked it (the engine tells its workers to let go).
_unlink_hooks: list[Callable[[str], None]] = []


class SharedArray:
    """A numpy array in shared memory.  Create it in the coordinator, put it in a job's ``fn_arg``,
    and read ``.array`` inside ``thread_fn``: each worker attaches once and caches the mapping.

    Only the creator unlinks (``unlink()``, or leaving its ``with`` block).  A handle that reaches
    another process pickles as the block's name, shape and dtype.
    """

    def __init__(self, name: str, shape: tuple[int, ...], dtype: DTypeLike):
        self.name = name
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self._owner = False
        self._unlinked = False

    @classmethod
    def create(
        cls,
        shape: SupportsIndex | Sequence[SupportsIndex],
        dtype: DTypeLike = np.uint8,
        *,
        placement: list[tuple[int, int, int]] | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> SharedArray:
        """A new zero-filled block with its memory reserved now.  Raises ShmSpaceError, before
        creating anything, if /dev/shm lacks the room.  ``placement``: ``(start_byte, end_byte,
        node)`` ranges whose pages should live on those NUMA nodes (mbind before the pages are
        allocated; silently not done where mbind is not available - check with memory_nodes).
        ``on_progress(fraction)``: called as each 256 MiB piece is reserved and mapped."""
        dims = (shape,) if isinstance(shape, SupportsIndex) else tuple(shape)
        sizes = tuple(integer("each of shape's sizes", n, 0) for n in dims)
        itemsize = np.dtype(dtype).itemsize
        nbytes = max(math.prod(sizes) * itemsize, 1)  # Python ints: no int64 wrap
        check_room(nbytes)
        name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(6)}"
        block = SharedMemory(name, create=True, size=nbytes)
        try:
            with _mapped_lock:
                _mapped[name] = (block, _view(block, sizes, np.dtype(dtype)))
            for start, end, node in placement or []:
                _bind(_mapped[name][1], start, end, node)
            done = _progress(on_progress, 2 * nbytes)  # reserved, then mapped
            _reserve(name, nbytes, done)
            prefault(_mapped[name][1], done)  # the pages exist now: map them here too, once
        except BaseException:  # ENOSPC, or Ctrl-C in a long reserve: leave nothing behind
            if _unmap(name) is None:
                block.close()
            block.unlink()
            raise
        self = cls(name, sizes, dtype)
        self._owner = True
        return self

    @property
    def array(self) -> np.ndarray:
        """The array, mapped into this process (attached and pre-faulted on first use)."""
        entry = _mapped.get(self.name)
        if entry is None:
            entry = _attach(self.name, self.shape, self.dtype)
        return entry[1]

    def unlink(self) -> None:
        """Unmap and remove the block (creator only), and tell the engines' workers to let go of
        it (bounded by their reply_timeout).  Ctrl-C waits until this is done: the block is
        then gone, never half gone.  A second call does nothing; a handle that did not create the
        block raises PermissionError."""
        if not self._owner:
            if self._unlinked:
                return
            raise PermissionError(f"only the creator of {self.name} unlinks it")
        with deferred_interrupts():
            block = _unmap(self.name)
            with contextlib.suppress(FileNotFoundError):  # swept, or removed by hand
                if block is not None:
                    block.unlink()
                else:  # not mapped here any more: removed by name, and untracked as unlink does
                    os.unlink(os.path.join(SHM_DIR, self.name))
                    resource_tracker.unregister(f"/{self.name}", "shared_memory")
            self._owner, self._unlinked = False, True
            for hook in list(_unlink_hooks):
                hook(self.name)

    def __enter__(self) -> SharedArray:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owner:
            self.unlink()

    def __reduce__(self) -> tuple:
        return (SharedArray, (self.name, self.shape, self.dtype.str))

    def __repr__(self) -> str:
        return f"SharedArray({self.name!r}, shape={self.shape}, dtype={self.dtype})"


class BlockOwner:
    """What owns shared blocks (a machine, a device, a mapping...): ``close()`` unlinks every block
    it made with ``_create`` (idempotent; Ctrl-C waits until it is done), also as a context
    manager."""

    def __init__(self) -> None:
        self._blocks: list[SharedArray] = []

    def _create(self, shape: int | tuple[int, ...], dtype: DTypeLike, **placement: Any) -> SharedArray:
        block = SharedArray.create(shape, dtype, **placement)
        self._blocks.append(block)
        return block

    def close(self) -> None:
        """Unlink the shared memory (idempotent; Ctrl-C waits until it is done)."""
        with deferred_interrupts():
            while self._blocks:
                self._blocks.pop().unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_room(nbytes: int) -> None:
    """Raise ShmSpaceError if /dev/shm cannot hold ``nbytes`` more."""
    stat = os.statvfs(SHM_DIR)
    free = stat.f_bavail * stat.f_frsize
    if nbytes > free:
        raise ShmSpaceError(
            f"{SHM_DIR} has {free / 2**30:.2f} GiB free but {nbytes / 2**30:.2f} GiB are needed: "
            f"ask for less memory or enlarge {SHM_DIR} (docker: --shm-size)"
        )


def detach(name: str) -> None:
    """Unmap ``name`` in this process if it is mapped (at once, or when the last view of it goes)."""
    _unmap(name)


def prefault(array: np.ndarray, done: Callable[[int], None] | None = None) -> bool:
    """Map every page of ``array`` writable now (MADV_POPULATE_WRITE), so later writes take no page
    faults.  False where the kernel lacks it (before 5.14); the writes then fault as they go.
    ``done(nbytes)`` is told of each piece mapped."""
    if array.nbytes == 0:
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = os.sysconf("SC_PAGESIZE")
    start = array.ctypes.data // page * page
    end = array.ctypes.data + array.nbytes
    for piece in range(start, end, PIECE_BYTES):
        if libc.madvise(piece, min(PIECE_BYTES, end - piece), MADV_POPULATE_WRITE) != 0:
            if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.EPERM):
                return False
            raise OSError(ctypes.get_errno(), f"madvise(MADV_POPULATE_WRITE) failed on {array.nbytes} bytes")
        if done is not None:
            done(min(PIECE_BYTES, end - piece))
    return True


def sweep_dead_owners() -> list[str]:
    """Unlink blocks whose creator process no longer exists (it was SIGKILLed before it could
    unlink them); returns their names."""
    swept = []
    for name in os.listdir(SHM_DIR):
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].partition("_")[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, name))
                swept.append(name)
    return swept


def on_unlink(hook: Callable[[str], None]) -> Callable[[], None]:
    """Call ``hook(name)`` after each block this process created is unlinked; returns a remover."""
    _unlink_hooks.append(hook)
    return lambda: _unlink_hooks.remove(hook)


def _attach(name: str, shape: tuple[int, ...], dtype: np.dtype) -> tuple[SharedMemory, np.ndarray]:
    with _mapped_lock:
        entry = _mapped.get(name)
        if entry is None:
            with _untracked():
                if sys.version_info < (3, 13):
                    block = SharedMemory(name)
                else:
                    block = SharedMemory(name, track=False)  # type: ignore[call-arg, unused-ignore]
            entry = _mapped[name] = (block, _view(block, shape, dtype))
            prefault(entry[1])
    return entry


@contextlib.contextmanager
def _untracked() -> Iterator[None]:
    """Before 3.13 every attach registers the block with the resource tracker, which then unlinks
    it, or warns of a leak, when this process exits (gh-82300).  Only the creator should register."""
    if sys.version_info >= (3, 13):
        yield
        return
    register = resource_tracker.register
    resource_tracker.register = lambda name, rtype: None
    try:
        yield
    finally:
        resource_tracker.register = register


@atexit.register
def _unmap_all() -> None:
    """At exit, unmap in order (views first): left to interpreter teardown, a block can be
    finalised before its view and complain.  Blocks still owned are not unlinked here."""
    for name in list(_mapped):
        _unmap(name)


def _unmap(name: str) -> SharedMemory | None:
    """Forget and close this process's mapping of ``name``; the block, or None if it was not mapped."""
    with _mapped_lock:
        entry = _mapped.pop(name, None)
    if entry is None:
        return None
    block = entry[0]
    del entry  # the cached view must go before the mapping can close
    try:
        block.close()
    except BufferError:
        # A view is still in use: the mapping goes with the last one.  Drop the block's own
        # handle so its __del__ does not try, and fail, to close it again.
        block._mmap = None  # type: ignore[attr-defined]
    return block


def _bind(view: np.ndarray, start: int, end: int, node: int) -> None:
    page = os.sysconf("SC_PAGESIZE")
    first = (view.ctypes.data + start) // page * page
    last = roundup(view.ctypes.data + min(end, view.nbytes), page)
    if last > first:
        bind_memory(first, last - first, node)


def _view(block: SharedMemory, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    count, buffer = math.prod(shape), block.buf
    assert buffer is not None  # None only once closed
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def _progress(on_progress: Callable[[float], None] | None, total: int) -> Callable[[int], None] | None:
    """``done(nbytes)`` for the steps of a long piecewise call, adding up to ``total`` bytes."""
    if on_progress is None:
        return None
    so_far = 0

    def done(nbytes: int) -> None:
        nonlocal so_far
        so_far += nbytes
        on_progress(min(so_far / total, 1.0))

    return done


def _reserve(name: str, nbytes: int, done: Callable[[int], None] | None = None) -> None:
    """Allocate the block's pages now: ENOSPC here instead of SIGBUS on a later first write.
    ``done(nbytes)`` is told of each piece reserved."""
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
    try:
        for offset in range(0, nbytes, PIECE_BYTES):
            os.posix_fallocate(fd, offset, min(PIECE_BYTES, nbytes - offset))
            if done is not None:
                done(min(PIECE_BYTES, nbytes - offset))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ShmSpaceError(f"{SHM_DIR} ran out of room reserving {nbytes} bytes") from exc
        raise
    finally:
        os.close(fd)
