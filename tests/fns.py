"""thread_fns for the tests: module-level so worker processes can import them."""

import os
import signal
import sys
import time


def nothing(start, end, arg):
    pass


def count(start, end, arg):
    """Add one to every index of [start, end) in the shared int64 array ``arg``."""
    arg.array[start:end] += 1


def count_slowly(start, end, arg):
    block, delay = arg
    block.array[start:end] += 1
    time.sleep(delay)


def raise_at(start, end, arg):
    block, bad = arg
    if start <= bad < end:
        raise ValueError(f"bad index {bad}")
    block.array[start:end] += 1


def kill_self_at(start, end, arg):
    """SIGKILL the process running the chunk holding ``bad`` - unless it is the coordinator, which
    works slowly, so a helper gets to that chunk first."""
    block, bad, coordinator = arg
    if os.getpid() == coordinator:
        time.sleep(0.05)
    elif start <= bad < end:
        os.kill(os.getpid(), signal.SIGKILL)
    block.array[start:end] += 1


def returns_value(start, end, arg):
    return [start, end]


def fail_with_code_at(start, end, arg):
    """The RFC's error return: -14 (-EFAULT) for the chunk holding ``bad``, leaving it untouched."""
    block, bad = arg
    if start <= bad < end:
        return -14
    block.array[start:end] += 1
    return 0


def uncount(start, end, arg):
    """undo_fn of count-like thread_fns: subtract what they added."""
    block = arg[0] if isinstance(arg, tuple) else arg
    block.array[start:end] -= 1


def undo_raises(start, end, arg):
    raise OSError("cannot undo")


def fail_late_or_early(start, end, arg):
    """Chunk 0 fails with -1 after ``delay`` seconds, chunk 1 with -2 at once; others count."""
    block, chunk, delay = arg
    if start // chunk == 0:
        time.sleep(delay)
        return -1
    if start // chunk == 1:
        return -2
    block.array[start:end] += 1
    return None


def record_pid(start, end, arg):
    arg.array[start:end] = os.getpid()


def kill_once_at(start, end, arg):
    """Like kill_self_at, but only the first time (``flag`` remembers): a re-run then succeeds.
    The coordinator works slowly, so a helper gets to the poisoned chunk first."""
    block, bad, coordinator, flag = arg
    if os.getpid() == coordinator:
        time.sleep(0.05)
    elif start <= bad < end and flag.array[0] == 0:
        flag.array[0] = 1
        os.kill(os.getpid(), signal.SIGKILL)
    block.array[start:end] += 1


def helpers_die(start, end, coordinator):
    """Every helper dies on every chunk it takes; the caller takes 0.3 s a chunk, so a helper
    always claims the next one while it works."""
    if os.getpid() != coordinator:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.3)


class LoadsOnlyHere:
    """Pickles anywhere, loads only in the process that made it: what a worker cannot load."""

    def __init__(self, block):
        self.block, self.pid = block, os.getpid()

    def __setstate__(self, state):
        if state["pid"] != os.getpid():
            raise RuntimeError("this object cannot be loaded in another process")
        self.__dict__.update(state)


def count_in(start, end, arg):
    arg.block.array[start:end] += 1


def raise_unloadable(start, end, arg):
    """In a worker: raise an exception whose class only the worker can import (its module is on
    the worker's path alone).  Nothing in the coordinator."""
    path, coordinator = arg
    if os.getpid() == coordinator:
        return
    sys.path.insert(0, path)
    import only_in_worker

    raise only_in_worker.Odd("odd one")


def exit_at(start, end, arg):
    if start <= arg < end:
        raise SystemExit(3)


def fork_and_exit(start, end, counts):
    """Fork a child that leaves through Python (SystemExit) inside thread_fn; count the range."""
    pid = os.fork()
    if pid == 0:
        sys.exit(0)
    os.waitpid(pid, 0)
    counts.array[start:end] += 1


def big_payload(start, end, arg):
    """A by-reference function with a large fn_arg (bytes): the payload is what is measured."""


def returns_arg(start, end, arg):
    return arg


def fork_a_sleeper(start, end, path):
    """Fork a child that sleeps for a minute (its pid written to the file ``path``), then hang:
    the worker is killed with its child still running."""
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    with open(path, "w") as f:
        f.write(str(pid))
    time.sleep(60)
