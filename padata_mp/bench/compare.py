"""``padata-mp compare A.json B.json``: each configuration present in both results, the ratio of
their median times (B over A: above 1 is slower), its 95% interval and a verdict.

A verdict of significance is given only where the runs can bear one: at least MIN_RUNS runs a
side and a spread (95% interval over the median) within SPREAD in both files; other rows say
"noisy" or "too few runs" and never fail a gate.  With ``fail_above`` (a percentage), a gated
configuration (the engine's rows unless ``kinds`` says otherwise) whose slowdown is significant
and whose ratio exceeds 1 + fail_above/100 is a regression: for CI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..checks import require
from .results import MIN_RUNS, SPREAD, Result, Row, label, spread
from .stats import Ratio, ratio

GATED = ("padata_mp",)  # the rows a gate judges by default: the engine's, not the references'


@dataclass(frozen=True)
class Change:
    """One configuration in both results: ``ratio`` is B's median time over A's; ``unjudged``
    says why no verdict is given ("" when one is)."""

    name: str
    kind: str
    a_ms: float
    b_ms: float
    ratio: Ratio
    unjudged: str

    @property
    def verdict(self) -> str:
        if self.unjudged:
            return self.unjudged
        return "same" if not self.ratio.significant else "slower" if self.ratio.value > 1 else "faster"

    def regressed(self, fail_above: float) -> bool:
        return self.verdict == "slower" and self.ratio.value > 1 + fail_above / 100


@dataclass
class Comparison:
    """The changes in A's order, what only one file measured, and each file's own warnings."""

    changes: list[Change]
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    warnings: dict[str, list[str]] = field(default_factory=dict)

    def regressions(self, fail_above: float, kinds: tuple[str, ...] = GATED) -> list[Change]:
        return [c for c in self.changes if c.kind in kinds and c.regressed(fail_above)]


def compare(a: Result, b: Result) -> Comparison:
    """Every configuration in both; BadValueError where the two measured different work (another
    job or another number of pages) or share no configuration."""
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
        [_change(row, theirs[key]) for key, row in ours.items() if key in theirs],
        [label(row) for key, row in ours.items() if key not in theirs],
        [label(row) for key, row in theirs.items() if key not in ours],
        {"A": a.warnings, "B": b.warnings},
    )


def _change(a: Row, b: Row) -> Change:
    runs = min(len(a.times_ms), len(b.times_ms))
    noisy = max(spread(a), spread(b))
    unjudged = (
        f"too few runs ({runs}; {MIN_RUNS} a side judge)"
        if runs < MIN_RUNS
        else f"noisy (spread {noisy:.0%}, over {SPREAD:.0%})"
        if noisy > SPREAD
        else ""
    )
    return Change(label(a), a.kind, a.time_ms, b.time_ms, ratio(b.times_ms, a.times_ms), unjudged)


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
    warnings and what the gate judged."""
    lines = [
        f"  {'configuration':36} |  A time_ms |  B time_ms | B / A [95% interval]  | verdict",
        f"  {'-' * 36} | ---------- | ---------- | --------------------- | -------",
    ]
    regressed = comparison.regressions(fail_above, kinds) if fail_above is not None else []
    for c in comparison.changes:
        verdict = c.verdict + (f" (past {fail_above:g}%)" if c in regressed else "")
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
        "B / A above 1: B took longer.  A verdict needs >= "
        f"{MIN_RUNS} runs a side and a spread within {SPREAD:.0%} in both files."
    )
    if fail_above is not None:
        lines.append(f"gate: a significant slowdown past {fail_above:g}% in the rows of {', '.join(kinds)}")
    return "\n".join(lines)
