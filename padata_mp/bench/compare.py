"""``padata-mp compare A.json B.json``: each configuration present in both results, the ratio of
their median times (B over A: above 1 is slower), its 95% interval and whether it is significant.

With ``fail_above`` (a percentage), a configuration whose slowdown is significant and whose
ratio exceeds 1 + fail_above/100 is a regression: for CI.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..checks import require
from .results import Result, Row, label
from .stats import Ratio, ratio


@dataclass(frozen=True)
class Change:
    """One configuration in both results: ``ratio`` is B's median time over A's."""

    name: str
    a_ms: float
    b_ms: float
    ratio: Ratio

    def regressed(self, fail_above: float) -> bool:
        return self.ratio.significant and self.ratio.value > 1 + fail_above / 100


def compare(a: Result, b: Result) -> list[Change]:
    """Every configuration in both, in A's order; BadValueError where the two measured different
    work (another job or another number of pages), whose times cannot be compared."""
    for what, x, y in (("job", a.config["job"], b.config["job"]), ("pages", a.pages, b.pages)):
        require(x == y, f"the results measured different work: {what} {x} against {y}")
    theirs: dict[tuple, Row] = {row.key: row for row in b.all_rows()}
    return [
        Change(
            label(row), row.time_ms, theirs[row.key].time_ms, ratio(theirs[row.key].times_ms, row.times_ms)
        )
        for row in a.all_rows()
        if row.key in theirs
    ]


def source(name: str, path: str, result: Result) -> str:
    """One line naming a result: where it came from, when, on what, from which version."""
    m, meta = result.machine, result.meta
    commit = f", commit {m['git_commit'][:12]}" if m.get("git_commit") else ""
    return (
        f"{name}: {path}: {meta.get('created', '?')}, {m.get('cpu_model', '?')}, "
        f"padata_mp {meta.get('padata_mp_version', '?')}{commit}"
    )


def report(changes: list[Change], fail_above: float | None = None) -> str:
    """The comparison as a table, a verdict per line: faster, slower or "same" (not significant)."""
    lines = [
        "  configuration                  |  A time_ms |  B time_ms | B / A [95% interval]  | verdict",
        "  ------------------------------ | ---------- | ---------- | --------------------- | -------",
    ]
    for c in changes:
        verdict = "same" if not c.ratio.significant else "slower" if c.ratio.value > 1 else "faster"
        if fail_above is not None and c.regressed(fail_above):
            verdict += f" (past {fail_above:g}%)"
        lo, hi = c.ratio.ci95
        lines.append(
            f"  {c.name:30} | {c.a_ms:10.1f} | {c.b_ms:10.1f} | "
            f"{c.ratio.value:5.3f} [{lo:5.3f}, {hi:5.3f}] | {verdict}"
        )
    if not changes:
        lines.append("  (no configuration in both)")
    return "\n".join(lines)
