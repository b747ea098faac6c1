"""How much the paired (interleaved) design tightens the interval of a build's ratio, from saved runs.

    python scripts/pairing_widths.py --reference bf16-032 --other bf16-031 RESULTS/<paired run> [RESULTS/<sequential run>]

For each decode cell: the paired interval (Wilcoxon signed-rank, from the other config's build_ratio[...] figure:
the per-slot ratios of the interleaved run), the unpaired interval of the same requests (Mann-Whitney, pairing
ignored), and, given a second run measured with QUANTGATE_BUILD_PAIRING=off, the unpaired interval of that
sequential run. Widths are high - low of the ratio, in points of percentage. Reads results/<run>/<config>/
figures.json only (quantgate.measurement).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from quantgate.paired import RatioInterval, log_ratio_interval, unpaired_ratio
from quantgate.pairing import RATIO_METRIC
from quantgate.stats import FigureKey


def _figures(run: Path, config_id: str) -> dict[str, dict]:
    path = run / config_id / "figures.json"
    try:
        return json.loads(path.read_text())["figures"]
    except (OSError, ValueError, KeyError) as exc:
        sys.exit(f"pairing_widths: {path}: cannot read the figures ({exc})")


def _cell(ref: dict[str, dict], other: dict[str, dict], name: str) -> RatioInterval | None:
    a, b = ref.get(name), other.get(name)
    return unpaired_ratio(a["samples"], b["samples"]) if a and b else None


def _text(interval: RatioInterval | None) -> str:
    return f"{interval.text()}, width {interval.width * 100:.1f} pts" if interval else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, help="config id on the reference build")
    p.add_argument("--other", required=True, help="config id on the compared build")
    p.add_argument("paired_run", type=Path, help="results/<run> measured interleaved")
    p.add_argument("sequential_run", type=Path, nargs="?", help="results/<run> measured with pairing off")
    args = p.parse_args(argv)
    ref, other = _figures(args.paired_run, args.reference), _figures(args.paired_run, args.other)
    seq = (_figures(args.sequential_run, args.reference), _figures(args.sequential_run, args.other)) \
        if args.sequential_run else None
    cells = sorted((FigureKey.parse(n) for n in other if FigureKey.parse(n).metric == RATIO_METRIC),
                   key=lambda k: (k.ctx or 0, k.out or ""))
    if not cells:
        sys.exit(f"pairing_widths: {args.paired_run / args.other}: no {RATIO_METRIC}[...] figure (was the run "
                 f"interleaved? its report's delta table says)")
    widths: dict[str, list[float]] = {"paired": [], "unpaired, same requests": [], "sequential": []}
    print(f"{args.other} vs {args.reference}: change of server decode tok/s (estimate (interval, confidence))")
    for key in cells:
        name = str(key.with_metric("decode_tps"))
        ratios = other[str(key)]["samples"]
        paired = log_ratio_interval([math.log(r) for r in ratios if r > 0])
        same = _cell(ref, other, name)
        rows = [("paired", paired), ("unpaired, same requests", same)]
        if seq is not None:
            rows.append(("sequential", _cell(seq[0], seq[1], name)))
        print(f"{key.params}:")
        for label, interval in rows:
            print(f"  {label:<24} {_text(interval)}")
            if interval is not None:
                widths[label].append(interval.width)
    print("median width over the cells: " + ", ".join(
        f"{label} {statistics.median(w) * 100:.1f} pts" for label, w in widths.items() if w))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
