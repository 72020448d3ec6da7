"""Half-open integer ranges [start, end): the one place their arithmetic is written.

The engine reports what was not done as ranges; the memory model cuts zones by holes and by what
later jobs hold.  Every function returns sorted, non-empty, disjoint ranges.
"""

from __future__ import annotations

from collections.abc import Iterable

Range = tuple[int, int]
Ranges = list[Range]


def ceil_div(value: int, divisor: int) -> int:
    """``value / divisor`` rounded up, for positive divisors."""
    return -(-value // divisor)


def roundup(value: int, multiple: int) -> int:
    """The least multiple of ``multiple`` at or above ``value``."""
    return ceil_div(value, multiple) * multiple


def merge_ranges(ranges: Iterable[Range]) -> Ranges:
    """Sorted, non-empty, with touching or overlapping ranges joined."""
    merged: Ranges = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def clip_ranges(ranges: Iterable[Range], start: int, end: int) -> Ranges:
    """The parts of ``ranges`` inside [start, end), merged."""
    return merge_ranges((max(lo, start), min(hi, end)) for lo, hi in ranges)


def subtract_ranges(whole: Range, ranges: Iterable[Range]) -> Ranges:
    """``whole`` less ``ranges``."""
    left, at = [], whole[0]
    for start, end in clip_ranges(ranges, *whole):
        if start > at:
            left.append((at, start))
        at = end
    if at < whole[1]:
        left.append((at, whole[1]))
    return left
