"""The engine's errors.  Each job error says which ranges were not done, so a caller can redo them."""

from __future__ import annotations

from .ranges import Ranges


class PadataError(Exception):
    """Base class of every error padata_mp raises on its own account."""


class BadValueError(ValueError):
    """An argument's value is out of range; the message names it and what to give instead."""


class BadTypeError(TypeError):
    """An argument is of the wrong type; the message names it and what to give instead."""


class JobFailedError(PadataError):
    """thread_fn failed: it raised, or returned a non-zero error code (the 2022 RFC's error return).

    ``error`` is the code returned, None when it raised; then ``__cause__`` is the original
    exception (rebuilt from the worker when it could be pickled) and the message carries the remote
    traceback.  ``not_done`` lists the ranges whose calls did not complete (the failing chunk
    included).  ``chunk`` is the failing call's range, or None when thread_fn and fn_arg could not
    even be loaded in the worker (then it ran nothing there).  For a job with an ``undo_fn``,
    ``undone`` lists the ranges it was called on: every range that had completed, so the job's
    effects are gone."""

    def __init__(
        self,
        message: str,
        *,
        chunk: tuple[int, int] | None,
        worker: int,
        not_done: Ranges,
        error: int | None = None,
    ):
        super().__init__(message)
        self.chunk = chunk
        self.worker = worker
        self.not_done = not_done
        self.error = error
        self.undone: Ranges = []


class WorkerDiedError(PadataError):
    """A helper process died during the job.  ``exitcode`` is its exit status (negative: the signal
    that killed it), ``chunk`` the range it held when it died (None if it held none) and
    ``not_done`` every range left undone.  For a job with an ``undo_fn``, ``undone`` lists the
    completed ranges it was called on; the dead helper's ``chunk`` is not among them: what it did
    there before dying is unknown."""

    def __init__(
        self,
        message: str,
        *,
        pid: int,
        exitcode: int | None,
        chunk: tuple[int, int] | None,
        not_done: Ranges,
    ):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.chunk = chunk
        self.not_done = not_done
        self.undone: Ranges = []


class EngineClosedError(PadataError):
    """The engine was closed while the job ran: its helpers were stopped.  ``not_done`` lists the
    ranges left undone."""

    def __init__(self, message: str, *, not_done: Ranges):
        super().__init__(message)
        self.not_done = not_done


class ShmSpaceError(PadataError):
    """/dev/shm has no room for a block; raised before the block exists, instead of a SIGBUS later."""
