"""Sizes as people write them: "512M", "64G", "1T"."""

from __future__ import annotations

import re

from ..checks import integer
from ..errors import BadValueError
from .pages import PAGE_SIZE

MAX_BYTES = 1 << 52  # 4 PiB: x86-64's physical address space with 5-level paging
UNITS = " KMGTP"


def parse_size(text: str | int) -> int:
    """Bytes from an int or a string such as ``"512M"``, ``"64G"``, ``"1T"`` (powers of 1024): a
    whole number of 4 KiB pages, from one page to 4P (x86-64's physical limit)."""
    if isinstance(text, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*", text, re.IGNORECASE)
        if not match:
            raise BadValueError(
                f"a size is a number with an optional K, M, G, T or P suffix, like 64G; got {text!r}"
            )
        whole, _, fraction = match[1].partition(".")
        scale = 1024 ** UNITS.index(match[2].upper() or " ")
        # Exact arithmetic: a float would overflow (or round) long before 4P is checked.
        value = int(whole) * scale + int(fraction or "0") * scale // 10 ** len(fraction)
    else:
        value = integer("a size", text)
    if value < PAGE_SIZE or value > MAX_BYTES:
        raise BadValueError(f"memory must be from one page ({PAGE_SIZE} bytes) to 4P, got {text!r}")
    if value % PAGE_SIZE:
        raise BadValueError(
            f"memory must be a whole number of {PAGE_SIZE}-byte pages, got {text!r} ({value} bytes)"
        )
    return value
