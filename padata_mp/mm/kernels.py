"""The chunk kernels that write struct pages: numpy's (the library's default) and the compiled one
(padata_mp.native's library through ctypes, which needs a C compiler), storing either as the
kernel does (``"c"``: cached stores) or streaming (``"c-stream"``: non-temporal stores, the widest
the CPU has, which skip reading each line before writing it).  All write the same words.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, get_args

from ..checks import require
from ..errors import PadataError
from ..native import build, load, stream_width

Kernel = Literal["numpy", "c", "c-stream"]
KERNELS: tuple[Kernel, ...] = get_args(Kernel)


@dataclass(frozen=True)
class Compiled:
    """The compiled kernel a chunk function calls: the library's path, and whether it streams."""

    library: str
    stream: bool

    def call(self, function: str, start: int, end: int, *args: object) -> None:
        """The library's ``function`` for pfns [start, end); OSError naming the library where it
        returns an error code."""
        error = getattr(load(self.library), function)(*args)
        if error:
            raise OSError(-error, f"the C kernel ({self.library}) failed on [{start}, {end})")


def check_kernel(kernel: str) -> Compiled | None:
    """The compiled kernel ``kernel`` names (None for numpy's), its library built now: before any
    work, a bad name is a BadValueError and a library that cannot be built a PadataError saying
    why.  Where the CPU has no non-temporal stores, "c-stream" says so (a RuntimeWarning, once)
    and stores plainly."""
    require(kernel in KERNELS, f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if kernel == "numpy":
        return None
    built = build("library")
    if built.path is None:
        raise PadataError(f"the C kernel is not available: {built.why}")
    if kernel == "c-stream" and not stream_width(str(built.path)):
        warnings.warn("c-stream: this CPU has no non-temporal stores; it stores plainly", RuntimeWarning, 2)
    return Compiled(str(built.path), kernel == "c-stream")
