"""``padata-mp compare A.json B.json``: each configuration present in both results, the ratio of
their median times (B over A: above 1 is slower), its 95% interval and a verdict.

The verdict reads the interval against a threshold PCT (``--fail-above``, else DEFAULT_PCT):
``slower`` where the whole interval lies above 1 + PCT, ``faster`` where it lies below 1 - PCT,
``same`` where it lies within [1 - PCT, 1 + PCT], and otherwise ``inconclusive``, with about how
many runs a side would settle it.  Noise widens the interval, so it makes verdicts inconclusive
rather than switching them off or on; only fewer than MIN_RUNS runs a side give no verdict.  A
gate fails on a gated configuration (the engine's rows unless ``kinds`` says otherwise) that is
``slower``; ``strict`` fails on an inconclusive one too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..checks import require
from .results import MIN_RUNS, Result, Row, label
from .stats import Ratio, ratio

GATED = ("padata_mp",)  # the rows a gate judges by default: the engine's, not the references'
DEFAULT_PCT = 5.0  # the verdicts' threshold where no gate sets one
MOST_RUNS = 1000  # an estimate of the runs that would settle a verdict is capped here


@dataclass(frozen=True)
class Change:
    """One configuration in both results: ``ratio`` is B's median time over A's, from ``runs``
    runs a side (the smaller side's count)."""

    name: str
    kind: str
    a_ms: float
    b_ms: float
    ratio: Ratio
    runs: int
    pct: float = DEFAULT_PCT

    @property
    def verdict(self) -> str:
        return self.judge(self.pct)

    def judge(self, pct: float) -> str:
        """``slower``, ``faster``, ``same`` or ``inconclusive`` against a threshold of ``pct``
        percent; ``too few runs`` below MIN_RUNS a side."""
        if self.runs < MIN_RUNS:
            return f"too few runs ({self.runs}; {MIN_RUNS} a side judge)"
        (lo, hi), band = self.ratio.ci95, pct / 100
        if lo > 1 + band:
            return "slower"
        if hi < 1 - band:
            return "faster"
        if 1 - band <= lo and hi <= 1 + band:
            return "same"
        return "inconclusive"

    def runs_to_settle(self) -> int:
        """About how many runs a side would narrow the interval (which shrinks as one over the
        square root of the runs) off the threshold it straddles; MOST_RUNS at most."""
        (lo, hi), band, value = self.ratio.ci95, self.pct / 100, self.ratio.value
        straddled = [t for t in (1 - band, 1 + band) if lo <= t <= hi] or [1 + band]
        distance = min(abs(value - t) for t in straddled)
        half = max(value - lo, hi - value)
        if distance <= 0 or half <= 0:
            return MOST_RUNS
        return min(MOST_RUNS, math.ceil(self.runs * (half / distance) ** 2))

    def regressed(self, fail_above: float) -> bool:
        return self.judge(fail_above) == "slower"


@dataclass
class Comparison:
    """The changes in A's order, what only one file measured, and each file's own warnings."""

    changes: list[Change]
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    warnings: dict[str, list[str]] = field(default_factory=dict)

    def gated(self, kinds: tuple[str, ...] = GATED) -> list[Change]:
        return [c for c in self.changes if c.kind in kinds]

    def regressions(self, fail_above: float, kinds: tuple[str, ...] = GATED) -> list[Change]:
        return [c for c in self.gated(kinds) if c.regressed(fail_above)]

    def unsettled(self, fail_above: float, kinds: tuple[str, ...] = GATED) -> list[Change]:
        """Gated changes the gate could not judge: inconclusive, or too few runs."""
        return [c for c in self.gated(kinds) if c.judge(fail_above) not in ("slower", "faster", "same")]


def compare(a: Result, b: Result, pct: float = DEFAULT_PCT) -> Comparison:
    """Every configuration in both, judged against ``pct`` percent; BadValueError where the two
    measured different work (another job or another number of pages) or share no configuration."""
    for what, x, y in (("job", a.config["job"], b.config["job"]), ("pages", a.pages, b.pages)):
        require(x == y, f"the results measured different work: {what} {x} against {y}")
    ours: dict[tuple, Row] = {row.key: row for row in a.all_rows()}
    theirs: dict[tuple, Row] = {row.key: row for row in b.all_rows()}
    require(
        bool(ours.keys() & theirs.keys()),
        f"the results share no configuration: A has {', '.join(map(label, ours.values())) or 'none'}; "
        f"B has {', '.join(map(label, theirs.values())) or 'none'}",
    )
    return Comparison(
        [_change(row, theirs[key], pct) for key, row in ours.items() if key in theirs],
        [label(row) for key, row in ours.items() if key not in theirs],
        [label(row) for key, row in theirs.items() if key not in ours],
        {"A": a.warnings, "B": b.warnings},
    )


def _change(a: Row, b: Row, pct: float) -> Change:
    runs = min(len(a.times_ms), len(b.times_ms))
    return Change(label(a), a.kind, a.time_ms, b.time_ms, ratio(b.times_ms, a.times_ms), runs, pct)


def source(name: str, path: str, result: Result) -> str:
    """One line naming a result: where it came from, when, on what, from which version."""
    m, meta = result.machine, result.meta
    commit = f", commit {m['git_commit'][:12]}" if m.get("git_commit") else ""
    return (
        f"{name}: {path}: {meta.get('created', '?')}, {m.get('cpu_model', '?')}, "
        f"padata_mp {meta.get('padata_mp_version', '?')}{commit}"
    )


def report(comparison: Comparison, fail_above: float | None = None, kinds: tuple[str, ...] = GATED) -> str:
    """The comparison as a table, a verdict per line, then what only one file has, each file's
    warnings, the rule, and what the gate judged."""
    pct = DEFAULT_PCT if fail_above is None else fail_above
    lines = [
        f"  {'configuration':36} |  A time_ms |  B time_ms | B / A [95% interval]  | verdict",
        f"  {'-' * 36} | ---------- | ---------- | --------------------- | -------",
    ]
    for c in comparison.changes:
        verdict = c.judge(pct)
        if verdict == "slower" and fail_above is not None and c.kind in kinds:
            verdict += f" (past {fail_above:g}%)"
        elif verdict == "inconclusive":
            verdict += f" (about {c.runs_to_settle()} runs a side would settle it)"
        lo, hi = c.ratio.ci95
        lines.append(
            f"  {c.name:36} | {c.a_ms:10.1f} | {c.b_ms:10.1f} | "
            f"{c.ratio.value:5.3f} [{lo:5.3f}, {hi:5.3f}] | {verdict}"
        )
    for name, only in (("A", comparison.only_in_a), ("B", comparison.only_in_b)):
        if only:
            lines.append(f"only in {name} (not compared): {', '.join(only)}")
    for name, warnings in comparison.warnings.items():
        lines.extend(f"{name} warned: {w}" for w in warnings)
    lines.append(
        f"B / A above 1: B took longer.  slower / faster: the whole interval beyond {pct:g}% either "
        f"way; same: the whole interval within it; inconclusive: neither.  {MIN_RUNS} runs a side judge."
    )
    if fail_above is not None:
        gated = comparison.gated(kinds)
        judged = len(gated) - len(comparison.unsettled(fail_above, kinds))
        failed = len(comparison.regressions(fail_above, kinds))
        lines.append(
            f"gate ({', '.join(kinds)} rows, {fail_above:g}%): {judged} of {len(gated)} judged, "
            f"{failed} slower"
        )
    return "\n".join(lines)
