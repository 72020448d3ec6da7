"""How often `padata-mp compare --fail-above PCT` fails, from pairs of `bench --json` runs of the
same code: its false alarms as they are, and its power with B's engine times scaled up.

    .venv/bin/python bench/gate_rates.py [--pct 5] [--scales 1.2,1.5,2] A1.json B1.json [A2.json B2.json ...]

For each pair (files taken two by two, in order): the exit status compare would give (1 where a
gated row is slower), for B as measured and for B with every engine row's times multiplied by each
scale; and how many gated rows were judged.  A row of B's that is not the engine's is left as it is.
"""

from __future__ import annotations

import argparse
import copy

from padata_mp.bench import compare, results


def scaled(result: results.Result, factor: float) -> results.Result:
    out = copy.deepcopy(result)
    for row in out.rows:
        if row.kind == "padata_mp":
            row.times_ms = [t * factor for t in row.times_ms]
    out.finish()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pct", type=float, default=5.0)
    parser.add_argument("--scales", default="1.2,1.5,2")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",")]
    pairs = list(zip(args.files[::2], args.files[1::2], strict=True))
    failed = {1.0: 0, **dict.fromkeys(scales, 0)}
    for a_path, b_path in pairs:
        a, b = results.load(a_path), results.load(b_path)
        line = []
        for factor in failed:
            comparison = compare.compare(a, b if factor == 1.0 else scaled(b, factor), args.pct)
            status = 1 if comparison.regressions(args.pct) else 0
            failed[factor] += status
            judged = len(comparison.gated()) - len(comparison.unsettled(args.pct))
            line.append(f"x{factor:g}: exit {status} ({judged}/{len(comparison.gated())} judged)")
        print(f"{a_path} / {b_path}: " + "; ".join(line))
    for factor, count in failed.items():
        what = "same code" if factor == 1.0 else f"engine x{factor:g}"
        print(f"{what}: exit 1 in {count} of {len(pairs)} pairs (--fail-above {args.pct:g})")


if __name__ == "__main__":
    main()
