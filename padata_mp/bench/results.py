"""What a benchmark run measured, as typed rows, and the JSON that keeps it (schema
``padata_mp.bench/2``, docs/bench-schema.md).

Every configuration is a ``Row``: the plain single-process loop (the kernel series' "(0)" row), the
engine at a thread count, the native C reference, a Python peer, or the store ceiling (one pass of
as many processes storing over the block); each keeps every run's time, and a row's ``% of
ceiling`` divides medians of the same rounds.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import BadValueError
from .stats import Ratio, median_ci95, ratio

SCHEMA = "padata_mp.bench/2"
NATIVE = "native (C, pthreads)"
NATIVE_STREAM = "native (C, pthreads, streaming)"
CEILING = "store ceiling"
MODE_GAP = 0.25  # a gap between sorted ceiling runs this wide (over their median) splits two modes
# The warnings' thresholds.
SPREAD = 0.10  # the median's 95% interval wider than this fraction of it
MIN_RUNS = 5
ROUND_TRIPS = 20  # a job shorter than this many engine round trips measures the engine
LOAD_AVERAGE = 0.5
# What a result file may hold: far more than any run writes, little enough to read in a second.
MAX_BYTES = 16 * 2**20
MAX_ROWS = 1000
MAX_RUNS = 10_000
KINDS = ("plain", "padata_mp", "native", "peer", "ceiling")


@dataclass
class Row:
    """One configuration's runs and what follows from them.  ``kind``: "plain", "padata_mp",
    "native", "peer" or "ceiling"; ``kernel``: the chunk work ("numpy", "c" or "c-stream"), or for
    the ceiling how it stores ("plain", "nontemporal", "fill"); ``threads``: 0 for the plain row.
    ``ratios`` hold other configurations' median time over this one's: "plain" (the plain row of
    the same kernel: the table's ratio), "native" (the native reference of the same stores at the
    same threads), "padata_mp" (the engine with the same kernel at the same threads), "c" (for
    c-stream rows: the same row with the kernel's cached stores)."""

    kind: str
    name: str
    kernel: str
    threads: int
    times_ms: list[float]
    node_percent: float = 0.0
    pages_per_s: float = 0.0
    gbps: float = 0.0
    ceiling_fraction: float | None = None
    ratios: dict[str, Ratio] = field(default_factory=dict)

    @property
    def time_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def ci95_ms(self) -> tuple[float, float]:
        return median_ci95(self.times_ms)

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What names the configuration across runs and machines."""
        return self.kind, self.name, self.kernel, self.threads

    @property
    def speedup(self) -> float:
        """The kernel series' speedup: the percentage of the plain row's time saved."""
        plain = self.ratios.get("plain")
        return 100.0 * (1 - 1 / plain.value) if plain else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["time_ms"], data["ci95_ms"], data["speedup"] = self.time_ms, list(self.ci95_ms), self.speedup
        data["ratios"] = {
            k: {"value": r.value, "ci95": list(r.ci95), "runs": r.runs, "significant": r.significant}
            for k, r in self.ratios.items()
        }
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        """The row's runs (its rates and ratios follow from them, in ``Result.finish``)."""
        return cls(**{k: data[k] for k in ("kind", "name", "kernel", "threads", "times_ms")})


@dataclass
class Result:
    """Everything one ``padata-mp bench`` run measured.  ``ceilings``: the store ceiling's rows;
    ``ceiling``: their median GB/s per thread count and way of storing (what ``% of ceiling``
    divides by), and ``ceiling_method`` says how it was measured.
    ``skipped`` says what was not measured and why (no compiler, a job without a native
    reference)."""

    machine: dict[str, Any]
    config: dict[str, Any]
    pages: int = 0  # what the job works on (deferred init's deferred pages, by default)
    bytes_per_page: int = 64
    phases_s: dict[str, float] = field(default_factory=dict)
    round_trip_ms: float = 0.0  # the engine's: an empty job of a few chunks, median
    ceiling: dict[int, dict[str, float]] = field(default_factory=dict)
    ceiling_method: str = ""
    rows: list[Row] = field(default_factory=list)  # plain and padata_mp
    native: list[Row] = field(default_factory=list)
    peers: list[Row] = field(default_factory=list)
    ceilings: list[Row] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # each with the rows it names, as the JSON keeps them
    warning_kinds: list[str] = field(default_factory=list)  # each with a count of its rows: the table's
    skipped: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # schema, version, created, argv

    def all_rows(self) -> list[Row]:
        return [*self.rows, *self.native, *self.peers, *self.ceilings]

    def find(self, kind: str, kernel: str, threads: int) -> Row | None:
        return next(
            (r for r in self.all_rows() if (r.kind, r.kernel, r.threads) == (kind, kernel, threads)), None
        )

    def finish(self) -> None:
        """Rates, ceiling fractions, ratios and warnings, from the runs."""
        node_cpus = min(len(n["cpus"]) for n in self.machine["nodes"] if n["cpus"])
        stored = self.machine.get("memmap_bytes", 0)  # what a ceiling pass writes
        if self.ceilings:  # else the ceiling a result was given (or none)
            self.ceiling = {}
        for row in self.ceilings:
            row.node_percent = 100.0 * row.threads / node_cpus
            row.gbps = stored / (row.time_ms / 1e3) / 1e9
            self.ceiling.setdefault(row.threads, {})[row.kernel] = row.gbps
        for row in [*self.rows, *self.native, *self.peers]:
            row.node_percent = 100.0 * row.threads / node_cpus
            row.pages_per_s = self.pages / (row.time_ms / 1e3)
            row.gbps = row.pages_per_s * self.bytes_per_page / 1e9
            ceiling = write_limit(self.ceiling.get(row.threads or 1, {}))
            row.ceiling_fraction = row.gbps / ceiling if ceiling else None
            reference = "c-stream" if row.kernel == "c-stream" else "c"
            against = {
                "plain": self.find("plain", row.kernel, 0),
                "native": self.find("native", reference, row.threads) if row.threads else None,
                "padata_mp": self.find("padata_mp", row.kernel, row.threads),
                # What streaming gains: the same configuration with the kernel's cached stores.
                "c": self.find(row.kind, "c", row.threads) if row.kernel == "c-stream" else None,
            }
            row.ratios = {
                name: ratio(other.times_ms, row.times_ms)
                for name, other in against.items()
                if other is not None and other is not row
            }
        found = warnings(self)
        self.warnings = [f"{kind}: {', '.join(rows)}" if rows else kind for kind, rows in found]
        self.warning_kinds = [f"{kind} ({len(rows)} rows)" if rows else kind for kind, rows in found]

    def to_json(self) -> dict[str, Any]:
        data = {**self.meta, **asdict(self)}
        del data["meta"], data["warning_kinds"]
        data["ceiling"] = {
            "method": self.ceiling_method,
            "gbps": {str(k): v for k, v in self.ceiling.items()},
        }
        del data["ceiling_method"]
        for name in ("rows", "native", "peers", "ceilings"):
            data[name] = [r.to_json() for r in getattr(self, name)]
        return data

    @classmethod
    def from_json(cls, data: object, source: str = "the result") -> Result:
        """A result written by ``to_json``; BadValueError, one line naming what is wrong, for
        anything else (an older schema, a field of the wrong type, a time that is not > 0)."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            found = data.get("schema", "none") if isinstance(data, dict) else type(data).__name__
            raise BadValueError(
                f"{source} is not a padata-mp bench result of schema {SCHEMA} (found {found!r:.40})"
            )
        _check_result(data, source)
        meta: dict[str, Any] = {
            k: data[k] for k in ("schema", "padata_mp_version", "created", "argv") if k in data
        }
        result = cls(data["machine"], data["config"], data["pages"], data["bytes_per_page"], meta=meta)
        result.rows, result.native, result.peers, result.ceilings = (
            [Row.from_json(r) for r in data.get(name, [])] for name in ("rows", "native", "peers", "ceilings")
        )
        result.warnings, result.skipped = data["warnings"], data["skipped"]
        return result


def load(path: str) -> Result:
    """A result from a JSON file of at most MAX_BYTES; BadValueError naming the file where it
    cannot be read or is not a result."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise BadValueError(f"cannot read {path!r}: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise BadValueError(f"{path!r} is over {MAX_BYTES >> 20} MiB: not a bench result")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise BadValueError(f"{path!r} is nested too deeply to be a bench result") from None
    except ValueError as exc:
        raise BadValueError(f"{path!r} is not JSON: {exc}") from None
    return Result.from_json(data, repr(path))


def _check_result(data: dict[str, Any], source: str) -> None:
    """Every field ``from_json`` and ``compare`` read, of the type the schema gives it."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise BadValueError(f"{source} is not a valid {SCHEMA} result: {what}")

    machine, config = data.get("machine"), data.get("config")
    need(isinstance(machine, dict), "machine must be an object")
    need(isinstance(config, dict) and isinstance(config.get("job"), str), "config must name its job")
    for name in ("pages", "bytes_per_page"):
        need(_is_count(data.get(name)), f"{name} must be an integer >= 0")
    for name in ("warnings", "skipped"):
        need(_is_strings(data.get(name)), f"{name} must be a list of strings")
    for name in ("created", "padata_mp_version"):
        need(isinstance(data.get(name, ""), str), f"{name} must be a string")
    need(_is_strings(data.get("argv", [])), "argv must be a list of strings")
    for name in ("cpu_model", "git_commit"):
        need(isinstance(data["machine"].get(name) or "", str), f"machine.{name} must be a string or null")
    keys = set()
    for name in ("rows", "native", "peers", "ceilings"):
        if name == "ceilings" and name not in data:  # results from before the ceiling was rows
            continue
        need(isinstance(data.get(name), list), f"{name} must be a list of rows")
        need(len(data[name]) <= MAX_ROWS, f"{name} holds over {MAX_ROWS} rows")
        for i, row in enumerate(data[name]):
            where = f"{name}[{i}]"
            need(isinstance(row, dict), f"{where} must be an object")
            need(row.get("kind") in KINDS, f"{where}.kind must be one of {', '.join(KINDS)}")
            for text in ("name", "kernel"):
                need(isinstance(row.get(text), str), f"{where}.{text} must be a string")
            need(_is_count(row.get("threads")), f"{where}.threads must be an integer >= 0")
            times = row.get("times_ms")
            runs = len(times) if isinstance(times, list) else 0
            need(1 <= runs <= MAX_RUNS, f"{where}.times_ms must be a list of 1 to {MAX_RUNS} times")
            need(all(_is_time(t) for t in times), f"{where}.times_ms must hold finite times > 0")
            key = (row["kind"], row["name"], row["kernel"], row["threads"])
            need(key not in keys, f"{where} repeats a configuration")
            keys.add(key)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_time(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def _is_strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def write_limit(ceiling: dict[str, float]) -> float:
    """The ceiling a row is a share of: the non-temporal stores' where measured (they skip the
    read before each write: the memory's write limit), else the best of the others."""
    return ceiling.get("nontemporal") or max(ceiling.values(), default=0.0)


def spread(row: Row) -> float:
    """The width of the row's median's 95% interval over the median."""
    low, high = row.ci95_ms
    return (high - low) / row.time_ms


def warnings(result: Result) -> list[tuple[str, list[str]]]:
    """What makes this run's figures less than trustworthy: each kind of warning, with the rows
    (and their figure) it names, if it names rows."""
    out: list[tuple[str, list[str]]] = []
    noisy = [f"{label(row)} {spread(row):.0%}" for row in result.all_rows() if spread(row) > SPREAD]
    if noisy:
        out.append(
            (
                f"spread over {SPREAD:.0%} (95% interval over the median; more runs (--repeat), a quiet "
                "machine and a fixed CPU frequency narrow it)",
                noisy,
            )
        )
    runs = min(len(r.times_ms) for r in result.all_rows())
    if runs < MIN_RUNS:
        out.append(
            (f"{runs} run(s) per configuration: fewer than {MIN_RUNS}, the intervals are [min, max]", [])
        )
    # Only the engine's rows pay its round trip; the plain loop, native code and the peers do not.
    short = [
        label(r)
        for r in result.all_rows()
        if r.kind == "padata_mp" and r.time_ms < ROUND_TRIPS * result.round_trip_ms
    ]
    if short:
        out.append(
            (
                f"shorter than {ROUND_TRIPS}x the engine's round trip ({result.round_trip_ms:.2f} ms), "
                "so the engine's fixed cost weighs",
                short,
            )
        )
    modal = []
    for row in result.ceilings:
        modes = _modes(row.times_ms)
        if modes:
            slow, fast = (result.machine.get("memmap_bytes", 0) / t / 1e6 for t in modes)
            modal.append(f"{label(row)} {slow:.1f} and {fast:.1f} GB/s")
    if modal:
        out.append(
            ("store ceilings whose runs fall in two modes (a share of the median depends on the mix)", modal)
        )
    above = []
    for r in result.all_rows():
        if (r.ceiling_fraction or 0) > 1:
            limit = _limit_row(result, r.threads or 1)
            ceiling_suspect = limit is not None and spread(limit) > max(SPREAD, spread(r))
            suspect = (
                f"the ceiling's spread {spread(limit):.0%}"
                if ceiling_suspect and limit
                else (f"the row's spread {spread(r):.0%}")
            )
            above.append(f"{label(r)} {r.ceiling_fraction:.0%}, suspect {suspect}")
    if above:
        out.append(
            ("above their store ceiling (the suspect figure is the one whose runs spread more)", above)
        )
    best = [(t, write_limit(c)) for t, c in sorted(result.ceiling.items())]
    for (t1, g1), (t2, g2) in itertools.pairwise(best):
        if g2 < g1:
            out.append(
                (f"the store ceiling falls from {g1:.1f} GB/s at {t1} to {g2:.1f} at {t2} thread(s)", [])
            )
    load_average = result.machine.get("load_average", [0.0])[0]
    if load_average > LOAD_AVERAGE:
        out.append((f"load average {load_average:.2f} when the run started: other work shared the CPUs", []))
    return out


def _modes(times_ms: list[float]) -> tuple[float, float] | None:
    """The medians of two modes in a row's runs, slow then fast, where the widest gap between two
    sorted runs is over MODE_GAP of their median with at least two runs either side; else None."""
    ordered = sorted(times_ms)
    if len(ordered) < 4:
        return None
    gaps = [(ordered[i + 1] - ordered[i], i + 1) for i in range(1, len(ordered) - 2)]
    gap, cut = max(gaps)
    if gap <= MODE_GAP * statistics.median(ordered):
        return None
    return statistics.median(ordered[cut:]), statistics.median(ordered[:cut])


def _limit_row(result: Result, threads: int) -> Row | None:
    """The ceiling row a row at ``threads`` is a share of (write_limit's choice)."""
    rows = {r.kernel: r for r in result.ceilings if r.threads == threads}
    return rows.get("nontemporal") or max(rows.values(), key=lambda r: r.gbps, default=None)


def label(row: Row) -> str:
    """How a row is named in prose: ``padata_mp (numpy) (2)``, ``(0) (c)``, ``Pool.map (2)``."""
    if row.kind == "plain":
        return f"(0) ({row.kernel})"
    if row.kind == "padata_mp":
        return f"padata_mp ({row.kernel}) ({row.threads})"
    if row.kind == "ceiling":
        return f"{row.name}, {row.kernel} ({row.threads})"
    return f"{row.name} ({row.threads})"
