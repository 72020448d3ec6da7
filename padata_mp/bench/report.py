"""A result as people and programs read it: the kernel series' table, CSV of every row, the plot.

"speedup" means one thing everywhere, the kernel series' meaning: the percentage of the (0) row's
time saved.  Every ratio (``Nx``) is a time over another, turned so that above 1 means the
padata_mp row is the faster; a star marks a ratio whose 95% interval excludes 1.
"""

from __future__ import annotations

import csv
from typing import IO

from ..mm.sizes import parse_size
from .results import Result, Row, label, write_limit
from .workloads import JOBS

CSV_FIELDS = (
    "kind",
    "name",
    "kernel",
    "threads",
    "node_percent",
    "runs",
    "time_ms",
    "ci95_lo_ms",
    "ci95_hi_ms",
    "pages_per_s",
    "gbps",
    "ceiling_fraction",
    "ratio_to_plain",
)


def _interval(row: Row, width: int = 7) -> str:
    lo, hi = row.ci95_ms
    return f"{row.time_ms:{width + 1}.1f} [{lo:{width}.1f}, {hi:{width}.1f}]"


def _ratio(row: Row, against: str, inverse: bool = False) -> str:
    r = row.ratios.get(against)
    if r is None:
        return ""
    return (r.inverse() if inverse else r).mark()


def interval_name(result: Result) -> str:
    """What the rows' intervals are: 95% intervals from 6 runs on, [min, max] below."""
    runs = min((len(r.times_ms) for r in result.all_rows()), default=0)
    return "95% interval" if runs >= 6 else "min, max"


def table(result: Result) -> str:
    m, config, phases = result.machine, result.config, result.phases_s
    host_nodes = [n for n in m["nodes"] if n["cpus"]]
    cpus = min(len(n["cpus"]) for n in host_nodes)
    per_node = ", ".join(f"{b / 2**30:.1f}" for b in m["mem_per_node_bytes"])
    # Every time column as wide as its widest value.
    width = max(7, *(len(f"{max(r.ci95_ms):.1f}") for r in result.all_rows()))
    times = f"time_ms [{interval_name(result)}]"
    span = max(len(times), len(_interval(result.all_rows()[0], width)))
    lines = [
        f"{m['cpu_model']}, {len(host_nodes)} node(s) x {cpus} CPU(s) ({m['topology']})",
        f"job: {JOBS[config['job']].description}; simulated: {config['nodes']} node(s), GiB per node "
        f"{per_node}; {m['memmap_bytes'] / 2**30:.2f} GiB written to; {result.pages} pages",
        f"phases: create {phases['create']:.2f} s, attach {phases['attach']:.2f} s, "
        f"verify {phases.get('verify', 0):.2f} s; engine round trip {result.round_trip_ms:.2f} ms",
        *_streaming_stores(config),
        "",
        f"  A row is one configuration: the median of {config['repeat']} runs [{interval_name(result)}]; "
        "(0) is the",
        "  job's plain loop in one process, no engine.  Ratios divide times, above 1 where padata_mp is",
        "  faster: ratio = (0)'s / this; of native = the native reference's / this (same threads).",
        "",
        f"  node% (thr) | kernel   | speedup  ratio  | {times:{span}} | Mpages/s |   GB/s "
        "| % of ceiling | of native",
        f"  ----------- | -------- | --------------- | {'-' * span} | -------- | ------ "
        "| ------------ | ---------",
    ]
    for row in result.rows:
        where = "     (0)" if row.threads == 0 else f"{row.node_percent:5.0f}% ({row.threads})"
        ceiling = "" if row.ceiling_fraction is None else f"{100 * row.ceiling_fraction:5.1f}%"
        lines.append(
            f"  {where:>11} | {row.kernel:8} | {row.speedup:6.1f}% {_ratio(row, 'plain'):6} | "
            f"{_interval(row, width):{span}} | {row.pages_per_s / 1e6:8.1f} | {row.gbps:6.2f} | "
            f"{ceiling:>12} | {_ratio(row, 'native')}"
        )
    if result.ceilings:
        lines += [
            "",
            f"  {'store ceiling (thr)':22} | stores      | {times:{span}} |   GB/s",
        ]
        for c in result.ceilings:
            lines.append(
                f"  {f'{c.node_percent:5.0f}% ({c.threads})':>22} | {c.kernel:11} | "
                f"{_interval(c, width):{span}} | {c.gbps:6.1f}"
            )
    others = result.native + result.peers
    if others:
        name_width = max(len(f"{o.name} ({o.threads})") for o in others)
        lines += [
            "",
            f"  {'other (thr)':{name_width}} | kernel   | {times:{span}} | Mpages/s | padata_mp vs this",
        ]
        for o in others:
            name = f"{o.name} ({o.threads})"
            lines.append(
                f"  {name:{name_width}} | {o.kernel:8} | {_interval(o, width):{span}} | "
                f"{o.pages_per_s / 1e6:8.1f} | {_ratio(o, 'padata_mp', inverse=True)}"
            )
    lines += [
        "",
        "  speedup: % of the (0) row's time saved.  * where a ratio's 95% interval excludes 1.",
        "  % of ceiling: GB/s over the store ceiling's median at the same threads, from the same",
        "  rounds (non-temporal where measured: the memory's write limit; the (0) row: one thread).",
        f"  store ceiling: {result.ceiling_method}.",
        "  padata_mp vs this: this row's time / the engine's, same kernel and threads.",
    ]
    streaming = _streaming_gain(result)
    if streaming:
        lines += ["", f"  c-stream over c (c's time / c-stream's, same configuration): {streaming}"]
    if result.skipped:
        lines += ["", "  skipped:"] + [f"  - {item}" for item in result.skipped]
    if result.warning_kinds:
        lines += ["", "  warnings (--json lists the rows each names):"]
        lines += [f"  - {kind}" for kind in result.warning_kinds]
    return "\n".join(lines)


def _streaming_stores(config: dict) -> list[str]:
    """How the c-stream rows stored, where there are some."""
    if "stream_bytes" not in config:
        return []
    if not config["stream_bytes"]:
        return ["c-stream: this CPU has no non-temporal stores, so its rows store plainly"]
    return [f"c-stream: {config['stream_bytes']}-byte non-temporal stores, one fence per chunk"]


def _streaming_gain(result: Result) -> str:
    """What non-temporal stores gained, per configuration: the c rows' time over c-stream's."""
    gains = [
        f"{'(0)' if row.kind == 'plain' else row.threads} {row.ratios['c'].mark()} "
        f"[{row.ratios['c'].ci95[0]:.2f}, {row.ratios['c'].ci95[1]:.2f}]"
        for row in result.rows
        if "c" in row.ratios
    ]
    return "; ".join(gains)


def write_csv(result: Result, out: IO[str]) -> None:
    """Every row (plain, engine, native, peers), one line each, with its kind."""
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for row in result.all_rows():
        plain = row.ratios.get("plain")
        writer.writerow(
            {
                **{k: getattr(row, k) for k in ("kind", "name", "kernel", "threads", "node_percent")},
                "runs": len(row.times_ms),
                "time_ms": row.time_ms,
                "ci95_lo_ms": row.ci95_ms[0],
                "ci95_hi_ms": row.ci95_ms[1],
                **{k: getattr(row, k) for k in ("pages_per_s", "gbps", "ceiling_fraction")},
                "ratio_to_plain": plain.value if plain else "",
            }
        )


def plot(result: Result, path: str) -> None:
    """Two panels: each configuration's ratio to its (0) row (the ideal line: the thread count),
    and GB/s written with the store ceiling; error bars are the 95% intervals; a caption names
    the machine, the memory and the date."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[Row]] = {}
    for row in result.all_rows():
        if row.threads:
            series.setdefault(label(row).rsplit(" (", 1)[0], []).append(row)
    threads = sorted({r.threads for rows in series.values() for r in rows})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    for name, rows in series.items():
        style = "o-" if rows[0].kind == "padata_mp" else "s--" if rows[0].kind == "native" else ".:"
        xs = [r.threads for r in rows]
        if all("plain" in r.ratios for r in rows):
            ratios = [r.ratios["plain"] for r in rows]
            # Clipped at 0: with one run an interval is its point, give or take a rounding.
            errors = [
                [max(0.0, r.value - r.ci95[0]) for r in ratios],
                [max(0.0, r.ci95[1] - r.value) for r in ratios],
            ]
            ax1.errorbar(xs, [r.value for r in ratios], yerr=errors, fmt=style, capsize=3, label=name)
        gbps = [r.gbps for r in rows]
        # The GB/s interval from the time's: GB/s falls as time rises.
        errors = [
            [max(0.0, g - g * r.time_ms / r.ci95_ms[1]) for g, r in zip(gbps, rows, strict=True)],
            [max(0.0, g * r.time_ms / r.ci95_ms[0] - g) for g, r in zip(gbps, rows, strict=True)],
        ]
        ax2.errorbar(xs, gbps, yerr=errors, fmt=style, capsize=3, label=name)
    ax1.plot(threads, threads, "k:", linewidth=1, label="ideal")
    ax1.set(
        xlabel="threads (processes) per node",
        ylabel="speedup: (0) row's time / this row's (higher is faster)",
        xticks=threads,
    )
    ax1.set_title(f"{JOBS[result.config['job']].description}: scaling")
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize="small")
    if result.ceiling:
        counts = sorted(result.ceiling)
        limits = [write_limit(result.ceiling[t]) for t in counts]
        ax2.plot(counts, limits, "k--", label="store ceiling (non-temporal: the write limit)")
    ax2.set(
        xlabel="threads (processes) per node",
        ylabel=f"GB/s written ({result.bytes_per_page} bytes a page)",
        title="bandwidth",
        xticks=threads,
    )
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize="small")
    m = result.machine
    fig.text(
        0.5,
        0.01,
        f"{m['cpu_model']}, {m['cores']} CPUs; {parse_size(result.config['mem']) / 2**30:g} GiB, "
        f"{result.pages} pages; "
        f"{result.meta.get('created', '')}; error bars: {interval_name(result)} of "
        f"{result.config['repeat']} runs",
        ha="center",
        fontsize="small",
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path)
    plt.close(fig)
