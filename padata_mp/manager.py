"""The workers as the coordinator keeps them, and the one thread that waits on them all (the data
flow is pool.py's diagram).

As in CPython's concurrent/futures/process.py, one manager thread waits on every worker's process
sentinel and on every pipe nobody else reads; it is never interrupted (Ctrl-C reaches the main
thread only), so no message is ever half read.  What it sees becomes an event for the worker's
owner - the running job or the exchange it is lent to: ``owner.deliver(helper, message)`` for a
reply, ``owner.deliver(helper, None)`` for a death, after the worker's last words.  A running
job's caller reads its own helpers' replies while it waits (``owner_reads``, ``Helper.take``):
one thread hand-off fewer a job; a worker's ``reading`` lock makes sure one thread at a time reads
its pipe, and deaths are still the manager's to see.  An idle worker's
death, or a dead one given back, is replaced: started in a thread of its own, outside any lock,
and in service once it says Ready (within START_TIMEOUT_S, or killed with a warning).  An
exchange's worker that has not answered by its deadline is killed, a warning says so.

A worker is lent to one owner at a time (``lend``) and given back (``give_back``); a worker the
coordinator killed is never lent again, and is replaced once its death is seen.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import spawn
from multiprocessing.process import ORIGINAL_DIR  # type: ignore[attr-defined]
from typing import Any, Protocol

from .errors import PadataError
from .interrupts import deferred_interrupts
from .topology import Topology
from .worker import Detach, Exit, Ready, worker_main

START_TIMEOUT_S = 60.0  # from a worker's start to its Ready
RESTART_BACKOFF_S = 1.0  # after a replacement failed to start, before the next try
TICK_S = 0.5  # the manager looks at deadlines at least this often
KILL_WAIT_S = 10.0  # the most a SIGKILLed worker is waited for (one in uninterruptible sleep)

STARTING, READY, DEAD = "starting", "ready", "dead"


class Owner(Protocol):
    """What a worker is lent to: told, in the manager thread, of each message and of the death."""

    def deliver(self, helper: Helper, message: object | None) -> None: ...


@dataclass(eq=False)
class Helper:
    """A worker process as the coordinator sees it.  ``owner`` is what it is lent to, None when
    idle; ``doomed``: the coordinator killed it, and it is never lent again."""

    wid: int
    node: int
    process: Any
    conn: Any
    state: str = STARTING
    owner: Owner | None = None
    doomed: bool = False
    deadline: float | None = None  # an exchange's: answer by then or be killed
    patience: float = 0.0  # how long it was given until the deadline
    pending_detach: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    said_all: bool = False  # its pipe reached its end
    replacing: bool = False  # dead, and a new worker is being started in its place
    overdue: bool = False  # ... for longer than a start may take (said once)
    # Leader/follower: while its owner waits for its reply, the owner reads its pipe itself, and
    # the manager only its sentinel; ``reading`` is held by whichever thread reads the pipe.
    owner_reads: bool = False
    reading: threading.Lock = field(default_factory=threading.Lock)
    pipe_returned: Callable[[], None] = lambda: None  # tells the manager to read the pipe again

    def send(self, message: object, pickled: bool = False) -> bool:
        """False if the worker is gone (its pipe is broken or already closed).  ``pickled``: the
        message is bytes, pickled once for many workers."""
        try:
            if pickled:
                self.conn.send_bytes(message)
            else:
                self.conn.send(message)
        except (OSError, ValueError):
            return False
        return True

    def take(self, into: Callable[[Helper, object], None]) -> None:
        """For an owner that reads this worker's pipe: its next message, if one has come, handed
        to ``into`` before any other thread may read the pipe, so a death the manager sees after
        it is told after it too.  At the pipe's end (the manager sees the death) or for a message
        that does not load (the worker is killed), the pipe goes back to the manager."""
        with self.reading:
            if not self.owner_reads:
                return
            what, message = _read(self)
            if what == "message":
                into(self, message)
            if what in ("message", "none"):
                return
            self.owner_reads = False
        if what == "unreadable":
            _distrust(self, message)
        self.pipe_returned()

    def kill(self) -> None:
        """SIGKILL, with every process it forked (its process group): from the moment this returns
        it runs no more of its code.  The manager sees its death and replaces it once it is given
        back."""
        self.doomed = True
        self.process.kill()  # first: one killed before it made its own group has no group yet
        _kill_group(self.process.pid)

    def kill_unresponsive(self, waited: float, stacklevel: int = 2) -> None:
        warnings.warn(
            f"padata_mp: worker {self.wid} (pid {self.process.pid}) did not answer within {waited:g} s "
            "(stopped, or stuck); killed, and replaced",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
        self.kill()

    def how_it_died(self) -> str:
        code = self.process.exitcode
        if code is None:
            return "a kill by the engine" if self.doomed else "an unknown cause"
        return f"signal {-code}" if code < 0 else f"exit code {code}"


class _HandedOver:
    """The owner of a worker on its way from one owner to the next: it hears nothing."""

    def deliver(self, helper: Helper, message: object | None) -> None:
        pass


_HANDED_OVER = _HandedOver()


class Manager:
    """The pool's workers.  ``nodes[i]`` is worker i's node; ``worker_args`` follow (wid, cpus,
    conn) in worker_main's arguments; ``reply_timeout`` bounds the unmapping of a block unlinked
    while a worker was lent.  Starts the workers and returns once each said Ready; raises
    PadataError (having stopped them all) if one dies or is silent for ``start_timeout`` s."""

    def __init__(
        self,
        ctx: Any,
        topology: Topology,
        nodes: list[int],
        worker_args: tuple,
        start_timeout: float,
        reply_timeout: float,
    ):
        self._ctx, self._topology, self._args = ctx, topology, worker_args
        self._start_timeout, self.reply_timeout = start_timeout, reply_timeout
        self.lock = threading.Lock()  # the workers list and each one's owner and state
        self._wake_r, self._wake_w = os.pipe()
        self._closing = False
        self._over = False  # closed: a replacement that starts now is stopped at once
        self._changed = True  # the workers to watch changed
        self._next_try: dict[int, float] = {}  # wid -> when a failed replacement may be tried again
        # Starts, deaths while starting and failed starts, for __init__ (and only while it waits:
        # a queue nobody reads would keep every replacement's process and pipes).
        self._started = queue.SimpleQueue[Helper | Exception]()
        self._constructing = True
        self.workers: list[Helper] = []
        self._thread = threading.Thread(target=self._run, name="padata-manager", daemon=True)
        self._starter: threading.Thread | None = None
        try:
            # The first workers start in a thread of their own, as replacements do: a start that
            # hangs (a forkserver stopped, or caught by a Ctrl-C to the whole process group) holds
            # up no one.  Ctrl-C is held meanwhile, ends the wait, and is raised after it.
            with deferred_interrupts() as held:
                self._thread.start()
                starter = threading.Thread(
                    target=self._start_all, args=(nodes,), name="padata-start", daemon=True
                )
                starter.start()
                self._starter = starter
                self._await_starts(len(nodes), held)
                self._constructing = False
                if held:
                    raise KeyboardInterrupt  # after the closing below
        except BaseException:
            self.close(0.0)
            raise

    # -- lending ------------------------------------------------------------------------------

    def idle(self, node: int | None = None) -> list[Helper]:
        """Workers free to lend (on ``node``); call with ``lock`` held."""
        return [
            w
            for w in self.workers
            if w.owner is None and w.state == READY and not w.doomed and (node is None or w.node == node)
        ]

    def lend(
        self, helpers: list[Helper], owner: Owner, patience: float | None = None, owner_reads: bool = False
    ) -> None:
        """``helpers`` (idle) now belong to ``owner``, each to answer within ``patience`` s (None:
        no bound, a chunk takes as long as it takes); call with ``lock`` held.  ``owner_reads``:
        the owner reads their replies itself (``take``) until it gives them back, sparing a reply
        the hand-off through this thread; the manager still watches for their deaths."""
        deadline = None if patience is None else time.monotonic() + patience
        for w in helpers:
            w.owner, w.deadline, w.patience = owner, deadline, patience or 0.0
            w.owner_reads = owner_reads

    def give_back(self, helpers: list[Helper]) -> None:
        """Helpers an owner is done with: idle again, after unmapping blocks unlinked meanwhile; the
        dead and the killed are replaced when their death is seen."""
        with self.lock:
            detaching = [w for w in helpers if w.pending_detach and w.state == READY and not w.doomed]
            for w in helpers:  # those detaching stay lent until their exchange takes them
                w.owner, w.deadline = _HANDED_OVER if w in detaching else None, None
            lost = any(w.state == DEAD or w.doomed for w in helpers)
        for w in helpers:
            self.read_pipe_again(w)
        for w in detaching:
            Exchange(self, Detach(w.pending_detach.pop(0)), self.reply_timeout, helpers=[w])
        if lost:
            self.wake()  # to replace them

    def read_pipe_again(self, w: Helper) -> None:
        """The manager reads ``w``'s pipe again (its owner is done reading it) from its next
        wake-up on."""
        with w.reading:
            w.owner_reads = False
        self._changed = True

    def _pipe_returned(self) -> None:
        self._changed = True
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # closed: the manager is gone
            os.write(self._wake_w, b"x")

    # -- the manager thread -------------------------------------------------------------------

    def _run(self) -> None:
        # A poll object kept between waits, made again only when the workers change: the thread
        # goes back to waiting (and lets the interpreter lock go) at once after a delivery.
        watched: dict[int, tuple[Helper, bool]] = {}  # fd of a pipe or a sentinel -> (worker, is_pipe)
        poller = select.poll()
        looked = 0.0
        while True:
            if self._changed:  # a start, a death, the closing: the set to watch is made again
                self._changed = False
                with self.lock:
                    live = [w for w in self.workers if w.state != DEAD]
                if self._closing and not live:
                    return
                watched = {w.process.sentinel: (w, False) for w in live}
                pipes = [w for w in live if not (w.said_all or w.owner_reads)]
                watched.update((w.conn.fileno(), (w, True)) for w in pipes)
                poller = select.poll()
                for fd in [self._wake_r, *watched]:
                    poller.register(fd, select.POLLIN)
            ready = [watched.get(fd) for fd, _ in poller.poll(TICK_S * 1000)]
            # Replies first, in the order they came, then deaths: a worker's last words come
            # before the news of its death.
            for w, is_pipe in filter(None, ready):
                if is_pipe and not w.said_all:
                    self._receive(w)
            for w, is_pipe in filter(None, ready):
                if not is_pipe and w.state != DEAD:
                    self._bury(w)
            if None in ready:  # the wake pipe: something was given back, or the end is near
                os.read(self._wake_r, 4096)
                self._changed = True
            tick = not ready or time.monotonic() - looked > TICK_S
            if tick:
                looked = time.monotonic()
                self._enforce_deadlines()
            if (tick or self._changed) and not self._closing:  # a failed start is tried again
                self._replace_the_dead()

    def _receive(self, w: Helper) -> None:
        with w.reading:
            if w.owner_reads:  # its owner reads it now: watched again once it is given back
                self._changed = True
                return
            what, message = _read(w)
        self._act(w, what, message)

    def _act(self, w: Helper, what: str, message: object) -> None:
        if what == "end":
            # Its pipe closes when it exits: dead, even where the news of its exit waits on a
            # stopped forkserver (which reaps it and writes its sentinel).
            w.said_all = self._changed = True
            self._bury(w)
        elif what == "unreadable":
            w.said_all = self._changed = True
            _distrust(w, message)
        elif what == "message" and w.state == STARTING:
            if isinstance(message, Ready):
                w.state = READY
                if self._constructing:
                    self._started.put(w)
        elif what == "message" and w.owner is not None:
            w.owner.deliver(w, message)

    def _bury(self, w: Helper) -> None:
        """``w`` exited: its last words first, then its death, to its owner."""
        with w.reading:  # the pipe is the manager's again: it reads the last words
            w.owner_reads = False
        while not w.said_all and w.conn.poll(0):
            self._receive(w)
        if w.state == DEAD:  # its last words were the end of its pipe
            return
        w.process.join(0.1)  # its exit status, ready at once unless the forkserver is stopped
        with self.lock:
            starting, w.state = w.state == STARTING, DEAD
            owner = w.owner
        w.conn.close()
        _kill_group(w.process.pid)  # what it forked dies with it
        self._changed = True
        if starting:
            self._next_try[w.wid] = time.monotonic() + RESTART_BACKOFF_S
            if self._constructing:
                self._started.put(w)
        if owner is not None:
            owner.deliver(w, None)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        with self.lock:
            workers = list(self.workers)
        for w in workers:
            if w.state == DEAD:
                if w.replacing and now - w.started > self._start_timeout and not w.overdue:
                    w.overdue = True
                    warnings.warn(
                        f"padata_mp: worker {w.wid}'s replacement has not started within "
                        f"{self._start_timeout:g} s (is the forkserver stopped?); the pool works on "
                        "without it",
                        RuntimeWarning,
                        stacklevel=1,
                    )
            elif w.doomed:
                continue
            elif w.state == STARTING and now - w.started > self._start_timeout:
                w.kill_unresponsive(self._start_timeout, stacklevel=1)
            elif w.deadline is not None and now > w.deadline:
                w.kill_unresponsive(w.patience, stacklevel=1)

    def _replace_the_dead(self) -> None:
        """Start a worker in the place of each dead one nobody holds, each in a thread of its own:
        a start that hangs (a stopped forkserver) holds up nothing but itself."""
        now = time.monotonic()
        with self.lock:
            dead = [w for w in self.workers if w.state == DEAD and w.owner is None and not w.replacing]
            dead = [w for w in dead if now >= self._next_try.get(w.wid, 0.0)]
            for w in dead:
                w.replacing, w.started = True, now
        for w in dead:
            threading.Thread(
                target=self._replace, args=(w,), name=f"padata-start-{w.wid}", daemon=True
            ).start()

    def _replace(self, dead: Helper) -> None:
        try:
            new = self._spawn(dead.wid, dead.node)
        except Exception as exc:  # the forkserver is gone, no memory...: tried again later
            self._next_try[dead.wid] = time.monotonic() + RESTART_BACKOFF_S
            with self.lock:
                dead.replacing = False
            self._changed = True
            warnings.warn(
                f"padata_mp: worker {dead.wid} could not be replaced ({exc})", RuntimeWarning, stacklevel=1
            )
            return
        self._list(new)

    def _start_all(self, nodes: list[int]) -> None:
        for wid, node in enumerate(nodes):
            if self._closing:  # the constructor gave up: start no more
                return
            try:
                new = self._spawn(wid, node)
            except Exception as exc:  # the forkserver is gone, no memory...: __init__ says so
                self._started.put(exc)
                return
            if not self._list(new):
                return

    def _list(self, new: Helper) -> bool:
        """Put a started worker on the list, in its id's place; False (and it is killed) where the
        engine is closed already."""
        with self.lock:  # closing or not: the closing kills whatever is on the list, until it is over
            if not self._over:
                self.workers[new.wid : new.wid + 1] = [new]
        if self._over:
            new.kill()
            new.process.join(KILL_WAIT_S)
            new.conn.close()
            return False
        self._changed = True
        self.wake()
        return True

    def _spawn(self, wid: int, node: int) -> Helper:
        ours, theirs = self._ctx.Pipe()
        args = (wid, self._topology.node(node).cpus, theirs, *self._args)
        process = self._ctx.Process(target=worker_main, args=args, name=f"padata-{wid}", daemon=True)
        try:
            with _main_not_rerun():
                process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        # Weakly: a worker that held its manager would make a cycle, and the processes' sentinels
        # (file descriptors) of a closed engine would wait for the cyclic collector.
        manager = weakref.WeakMethod(self._pipe_returned)
        return Helper(wid, node, process, ours, pipe_returned=lambda: (told := manager()) and told())

    def _await_starts(self, count: int, interrupted: list[int]) -> None:
        deadline = time.monotonic() + self._start_timeout
        while count and not interrupted:
            try:
                # In ticks, ending at a held Ctrl-C: its handler runs only when this thread next
                # runs Python code, which may be a finaliser where a KeyboardInterrupt is lost.
                started = self._started.get(timeout=TICK_S)
            except queue.Empty:
                if time.monotonic() < deadline:
                    continue
                raise PadataError(
                    f"{count} worker(s) did not start within {self._start_timeout:.0f} s"
                ) from None
            if isinstance(started, Exception):
                raise PadataError(f"a worker could not be started: {started}")
            if started.state == DEAD:
                raise PadataError(f"worker {started.wid} died while starting ({started.how_it_died()})")
            count -= 1

    # -- the end ------------------------------------------------------------------------------

    def close(self, timeout: float) -> None:
        """Idle workers are asked to exit, lent ones killed (their owners are told of the deaths);
        any still alive after ``timeout`` s is killed.  Returns once every one is dead and reaped
        (or, for one stuck in the kernel, KILL_WAIT_S has passed)."""
        with self.lock:
            self._closing = self._changed = True
        if self._starter is not None:  # a process half launched would be left to fail on its own
            self._starter.join(KILL_WAIT_S)
        with self.lock:
            workers = list(self.workers)
        for w in workers:
            if w.state == READY and w.owner is None:
                w.send(Exit())
            elif w.state != DEAD:
                w.kill()
        self._wait_for_the_end(time.monotonic() + timeout)
        deadline = time.monotonic() + KILL_WAIT_S
        while self._thread.is_alive() and time.monotonic() < deadline:
            with self.lock:  # a replacement started just before the closing is on the list now
                alive = [w for w in self.workers if w.state != DEAD]
            for w in alive:
                w.kill()
            self._wait_for_the_end(min(deadline, time.monotonic() + TICK_S))
        with self.lock:
            workers, self.workers, self._over = self.workers, [], True
        for w in workers:
            if w.state != DEAD:  # never started, the thread never ran, or stuck in the kernel
                w.process.join(0 if self._thread.is_alive() else KILL_WAIT_S)
                w.conn.close()
        if not self._thread.is_alive():  # else it still waits on the pipe: left open, not pulled away
            wake_w, self._wake_w = self._wake_w, -1
            os.close(self._wake_r)
            os.close(wake_w)

    def _wait_for_the_end(self, deadline: float) -> None:
        if self._thread.is_alive():
            self._changed = True
            self.wake()
            self._thread.join(max(0.0, deadline - time.monotonic()))


_preparing = threading.Lock()


@contextlib.contextmanager
def _main_not_rerun() -> Iterator[None]:
    """A worker starting while ``__main__`` is no file (a script fed on stdin: ``<stdin>``) does
    not try to re-run it, which multiprocessing's spawn and forkserver do by its path, failing with
    FileNotFoundError.  Functions of such a main travel by value (cloudpickle), so the workers do
    not need it.  Where the main is a file, nothing changes."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if path is None or os.path.isfile(os.path.join(ORIGINAL_DIR or "", path)):
        yield
        return
    with _preparing:
        original = spawn.get_preparation_data

        def preparation_data(name: str) -> dict[str, Any]:
            data = original(name)
            data.pop("init_main_from_path", None)
            return data

        spawn.get_preparation_data = preparation_data
        try:
            yield
        finally:
            spawn.get_preparation_data = original


def _kill_group(pid: int | None) -> None:
    """SIGKILL the process group a worker made of itself (worker_main's first act): the processes
    its thread_fn forked, which would otherwise outlive it, holding the shared mappings."""
    if pid is not None:
        with contextlib.suppress(OSError):  # none left (or never made)
            os.killpg(pid, signal.SIGKILL)


def _distrust(w: Helper, error: object) -> None:
    """A message that does not load: the worker is not to be trusted."""
    warnings.warn(
        f"padata_mp: worker {w.wid} sent what cannot be read ({error}); killed", RuntimeWarning, stacklevel=1
    )
    w.kill()


def _read(w: Helper) -> tuple[str, object]:
    """The next message on ``w``'s pipe, by the thread holding ``w.reading``: ("message", m),
    ("none", None) when none has come, ("end", None) at the pipe's end, ("unreadable", error)."""
    try:
        if not w.conn.poll(0):
            return "none", None
        return "message", w.conn.recv()
    except (EOFError, OSError):
        return "end", None
    except Exception as exc:
        return "unreadable", exc


class Exchange:
    """Workers lent for one question (attach, detach): every idle one, or ``helpers``.  The manager
    gathers their answers and gives each back as it answers; one that has not answered in
    ``timeout`` s is killed (a warning says so) and replaced.  It goes on without whoever asked, if
    they stop waiting (Ctrl-C).  ``busy_too``: workers lent elsewhere are told afterwards, as
    their owner gives them back (a Detach)."""

    def __init__(
        self,
        manager: Manager,
        message: object,
        timeout: float,
        helpers: list[Helper] | None = None,
        busy_too: str | None = None,
    ):
        self._manager, self.timeout = manager, timeout
        self.answers: dict[int, Any] = {}
        self._wake = queue.SimpleQueue[None]()
        self._deadline = time.monotonic() + timeout + KILL_WAIT_S
        with manager.lock:
            helpers = manager.idle() if helpers is None else helpers
            if busy_too is not None:
                for w in manager.workers:
                    if w.owner is not None and w.state == READY:
                        w.pending_detach.append(busy_too)
            manager.lend(helpers, self, timeout)
            # Died while handed over: its death went to no owner, so it is told here.
            buried = [w for w in helpers if w.state == DEAD]
        self._waiting = {w.wid for w in helpers}
        for w in buried:
            self.deliver(w, None)
        for w in helpers:
            if w not in buried and not w.send(message):
                w.kill()  # gone already: its death is its answer
        manager.wake()

    def deliver(self, helper: Helper, message: object | None) -> None:
        self.answers[helper.wid] = message
        self._waiting.discard(helper.wid)
        self._manager.give_back([helper])
        self._wake.put(None)

    def wait(self) -> dict[int, Any]:
        """Each worker's answer (None: it died, or was killed for not answering), once all are in;
        bounded, since the manager kills the silent."""
        while self._waiting and time.monotonic() < self._deadline:
            with contextlib.suppress(queue.Empty):
                self._wake.get(timeout=TICK_S)
        return self.answers
