"""Ctrl-C by rule: where it may land, where it waits, and what it may never cut short.

Python runs a SIGINT handler in the main thread only, between two bytecodes of whatever runs
there.  Two tools, one rule - a KeyboardInterrupt is raised only where nothing is held:

- ``gate()``: for the length of an engine call, SIGINT raises at once, except while the gate is
  ``up`` (the engine holds a lock shared with other processes, sends a message, or cleans up after
  an interrupt); then it is held and raised when the gate drops.  Raising lifts the gate itself,
  so the code that catches the interrupt cleans up with the gate already up and no second Ctrl-C
  can cut it short.  ``up`` and ``held`` are one-element lists: the claim loop sets them per chunk
  for a few nanoseconds.
- ``deferred_interrupts()``: Ctrl-C and SIGTERM held for a whole block (cleanup of shared memory,
  a process start), raised as KeyboardInterrupt when it ends.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Gate:
    """Where SIGINT may raise.  ``up[0]``: hold it; ``held[0]``: one came while up.
    ``on_interrupt``: called first, under the gate, when one is raised (a stop that must happen
    whatever line the interrupt lands on)."""

    def __init__(self, previous: Callable[[int, Any], Any] | None = None) -> None:
        self.up = [False]
        self.held = [False]
        self._previous = previous
        self.on_interrupt: Callable[[], object] | None = None

    def handler(self, signum: int, frame: Any) -> None:
        if self.up[0]:
            self.held[0] = True
            return
        self.up[0] = True  # the catcher cleans up under the gate
        if self.on_interrupt is not None:
            self.on_interrupt()
        if self._previous is None or self._previous is signal.default_int_handler:
            raise KeyboardInterrupt
        self._previous(signum, frame)  # a handler of the program's own: it may raise, or not
        self.up[0] = False

    def lower(self) -> None:
        """Drop the gate; an interrupt held meanwhile is raised now (the gate up again)."""
        self.up[0] = False
        if self.held[0]:
            self.held[0] = False
            self.handler(signal.SIGINT, None)

    def raised(self) -> _Raised:
        """The gate up for a block that must not be cut short; lowered after, unless it was up."""
        return _Raised(self)


class _Raised:
    """``with gate.raised():`` - a class, not a generator: it is entered several times a job."""

    __slots__ = ("gate", "was")

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def __enter__(self) -> None:
        self.was, self.gate.up[0] = self.gate.up[0], True

    def __exit__(self, *exc: object) -> None:
        if not self.was:
            self.gate.lower()


_installed = threading.local()
_deferring = threading.local()


@contextlib.contextmanager
def gate(on_interrupt: Callable[[], object] | None = None) -> Iterator[Gate]:
    """The SIGINT gate for an engine call.  In the main thread it is the process's SIGINT handler
    for the call (the one already installed, when calls nest); elsewhere, where no signal handler
    runs, and where SIGINT is ignored or left to kill the process, a gate that nothing opens.
    ``on_interrupt`` is the gate's first act when it raises, for the block's length."""
    current: Gate | None = getattr(_installed, "gate", None)
    if current is not None:
        outer, current.on_interrupt = current.on_interrupt, on_interrupt or current.on_interrupt
        try:
            yield current
        finally:
            current.on_interrupt = outer
        return
    if threading.current_thread() is not threading.main_thread():
        yield Gate()
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # SIG_IGN, SIG_DFL, or set outside Python
        yield Gate()
        return
    made = Gate(previous)
    made.on_interrupt = on_interrupt
    _installed.gate = made
    try:
        signal.signal(signal.SIGINT, made.handler)  # in the try: one landing now restores too
        yield made
    finally:
        was_up, made.up[0] = made.up[0], True  # one landing while the handler is put back: held
        _installed.gate = None
        signal.signal(signal.SIGINT, previous)
        # Leaving normally with an interrupt held: it is raised now, as it would have been.
        if made.held[0] and not was_up:
            made.up[0] = made.held[0] = False
            made.handler(signal.SIGINT, None)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[list[int]]:
    """Hold Ctrl-C (and SIGTERM) until the block ends, then raise KeyboardInterrupt: cleanup that is
    cut short leaks the very segments it was removing.  It yields the signals held so far, for a
    wait that should end early on one (a handler that only records cannot be lost, as a
    KeyboardInterrupt raised inside a finaliser is).  Only the main thread can do this; elsewhere
    the block runs as is."""
    outer: list[int] | None = getattr(_deferring, "held", None)
    if outer is not None:  # nested: the outermost block holds, and raises when it ends
        yield outer
        return
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    _deferring.held = held
    previous = {
        sig: signal.signal(sig, lambda signum, frame: held.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield held
    finally:
        _deferring.held = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held and sys.exc_info()[0] is None:  # not over an exception already on its way out
            raise KeyboardInterrupt
