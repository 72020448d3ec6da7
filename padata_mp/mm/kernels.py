"""The chunk kernels that write struct pages: numpy's and the compiled one (padata_mp.native's
library through ctypes, which needs a C compiler), storing either as the kernel does (``"c"``:
cached stores) or streaming (``"c-stream"``: non-temporal stores, the widest the CPU has, which
skip reading each line before writing it).  All write the same words.  ``"auto"``, the default,
is the fastest that is here: c-stream where the library builds, passes its self-test and the CPU
streams, else c, else numpy (as numpy itself picks its fastest loops at run time).
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
KernelChoice = Literal["auto", "numpy", "c", "c-stream"]  # what a caller may ask for
AUTO = "auto"


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


def choose_kernel(kernel: str) -> tuple[Kernel, Compiled | None]:
    """The kernel ``kernel`` names ("auto": the fastest here) and its compiled library (None for
    numpy's), built now, before any work."""
    if kernel != AUTO:
        return kernel, check_kernel(kernel)  # type: ignore[return-value]  # checked there
    built = build("library")
    if built.path is None:
        return "numpy", None
    chosen: Kernel = "c-stream" if stream_width(str(built.path)) else "c"
    return chosen, Compiled(str(built.path), chosen == "c-stream")


def check_kernel(kernel: str) -> Compiled | None:
    """The compiled kernel ``kernel`` names (None for numpy's), its library built now: before any
    work, a bad name is a BadValueError and a library that cannot be built a PadataError saying
    why.  Where the CPU has no non-temporal stores, "c-stream" says so (a RuntimeWarning, once)
    and stores plainly."""
    require(
        kernel in KERNELS or kernel == AUTO,
        f"kernel must be one of {AUTO}, {', '.join(KERNELS)}, got {kernel!r}",
    )
    if kernel == AUTO:
        return choose_kernel(kernel)[1]
    if kernel == "numpy":
        return None
    built = build("library")
    if built.path is None:
        raise PadataError(f"the C kernel is not available: {built.why}")
    if kernel == "c-stream" and not stream_width(str(built.path)):
        warnings.warn("c-stream: this CPU has no non-temporal stores; it stores plainly", RuntimeWarning, 2)
    return Compiled(str(built.path), kernel == "c-stream")
