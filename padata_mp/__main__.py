"""``padata-mp`` and ``python -m padata_mp``.  Ctrl-C and SIGTERM are held from this module's
first lines, before anything that takes time is imported, and handed to the command line, which
ends them in one line and exit status 130."""

import signal
import sys


def main() -> int:
    held: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: held.append(signum))
    from .cli import main as command_line

    return command_line(held=held)


if __name__ == "__main__":
    sys.exit(main())
