"""baselines/<key>/noise.json from fresh-engine runs across calls: A/A trials judged as the gate judges.

    python scripts/gpu/calibrate_runs.py BASELINES KEY RESULTS_DIR... [--sigmas 3] [--min 0.02] [--power 0.95]

Every results/<run>/<config>/figures.json is one fresh engine. A copy `<id>--<name>` (scripts/gpu/copies.py)
counts as an engine of <id>; a copy named `inj<N>` ran with an injected slowdown and is judged, not pooled.
Engines started on the machine's first start since boot (figures.json start_condition "first") are kept
apart: the A/A statistics are over warm starts, and the first starts are judged against them to show the
first-start level. For each config and pooled per metric (quantgate.gate.calibration.calibrate): between-engine CV,
tolerance = sigmas x CV (clamped to [min, 0.6]), false alarms over every ordered pair of engines, the smallest
slowdown caught in `power` of the trials, and the detection rate at 2%, 3% and 5%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from quantgate.gate.baselines import Baseline, BaselineStore, judge  # noqa: E402
from quantgate.gate.calibration import Limits, _trial_outcomes, calibrate, calibrated_noise, trial_pairs  # noqa: E402
from quantgate.stats import Figure  # noqa: E402

POWER_AT = (0.02, 0.03, 0.05)


def load_engines(roots: list[Path]) -> list[dict[str, Any]]:
    engines = []
    for root in roots:
        for path in sorted(root.glob("*/*/figures.json")):
            body = json.loads(path.read_text())
            cid = body["config"]
            base, _, copy = cid.partition("--")
            figures = {name: Figure(name, f["unit"], bool(f["higher_is_better"]), tuple(f.get("samples") or ()),
                                    f.get("source", "client"), bool(f.get("gated", True)))
                       for name, f in body["figures"].items()
                       if f.get("gated") and f.get("samples") and f["unit"] != "fraction"}
            engines.append({"config": base, "copy": copy, "run": body["run_id"], "path": str(path.parent),
                            "start": body.get("start_condition") or "unknown",
                            "injected": float(copy[3:]) / 100 if copy.startswith("inj") else None,
                            "ready_s": body.get("engine_ready_s"), "figures": figures})
    return engines


def runs_of(engines: list[dict[str, Any]]) -> list[dict[str, Figure]]:
    return [{f"{e['config']}/{n}": f for n, f in e["figures"].items()} for e in engines]


def power(runs: list[dict[str, Figure]], metric: str, tolerance: float, s: float) -> tuple[int, int]:
    caught = total = 0
    for key in sorted({k for r in runs for k in r if k.split("/", 1)[1].split("[", 1)[0] == metric}):
        outcomes = _trial_outcomes(trial_pairs(runs, key), calibrated_noise(metric, tolerance), s)
        caught += outcomes.count("fail")
        total += len(outcomes)
    return caught, total


def judge_against(engines: list[dict[str, Any]], reference: list[dict[str, Any]], tolerance: float
                  ) -> list[dict[str, Any]]:
    """Each engine's decode figures against a baseline made from the median of the reference engines."""
    rows = []
    for e in engines:
        for name, fig in sorted(e["figures"].items()):
            if fig.metric != "decode_tps":
                continue
            ref = [r["figures"][name] for r in reference if r["config"] == e["config"] and name in r["figures"]]
            if not ref:
                continue
            samples = tuple(statistics.median(f.samples) for f in ref)
            base = Baseline(e["config"], "x", {name: Figure(name, fig.unit, True, samples).summary()})
            v = judge(e["config"], fig, base, calibrated_noise("decode_tps", tolerance))
            rows.append({"config": e["config"], "engine": e["copy"] or "main", "run": e["run"], "figure": name,
                         "delta": round(v.delta or 0.0, 4), "outcome": v.outcome})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("baselines")
    ap.add_argument("key")
    ap.add_argument("results", nargs="+")
    ap.add_argument("--sigmas", type=float, default=3.0)
    ap.add_argument("--min", type=float, default=0.02)
    ap.add_argument("--power", type=float, default=0.95)
    ap.add_argument("--dry", action="store_true", help="print, write nothing")
    args = ap.parse_args()
    limits = Limits(sigmas=args.sigmas, min_tolerance=args.min, power=args.power)
    engines = load_engines([Path(p) for p in args.results])
    aa = [e for e in engines if e["injected"] is None and e["start"] != "first"]
    first = [e for e in engines if e["injected"] is None and e["start"] == "first"]
    injected = [e for e in engines if e["injected"] is not None]
    pooled = calibrate(runs_of(aa), limits)
    per_config: dict[str, Any] = {}
    for cid in sorted({e["config"] for e in aa}):
        mine = [e for e in aa if e["config"] == cid]
        res = calibrate(runs_of(mine), limits).get("decode_tps")
        if res is None:
            continue
        tol = pooled["decode_tps"].tolerance
        caught = {f"{s:.0%}": "{}/{}".format(*power(runs_of(mine), "decode_tps", tol, s)) for s in POWER_AT}
        per_config[cid] = {
            "engine_starts": len(mine), "runs": sorted({e["run"] for e in mine}),
            "own": res.to_dict(), "caught_at_pooled_tolerance": caught,
            "first_starts": len([e for e in first if e["config"] == cid]),
        }
    body: dict[str, Any] = {
        "hardware": args.key, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": "A/A across fresh engines (scripts/gpu/calibrate_runs.py): every ordered pair of warm-start "
                  "engines of a config is one trial per figure, judged by baselines.judge; tolerance = sigmas x "
                  "pooled between-engine CV, clamped to [min, 0.6]",
        "sigmas": limits.sigmas, "min_tolerance": limits.min_tolerance, "power": limits.power,
        "k": max((c["engine_starts"] for c in per_config.values()), default=0),
        "metrics": {m: r.to_dict() for m, r in sorted(pooled.items())},
        "configs": per_config,
    }
    tol = pooled["decode_tps"].tolerance if "decode_tps" in pooled else limits.max_tolerance
    if first:
        body["first_start"] = judge_against(first, [e for e in aa if e["config"] in {f["config"] for f in first}],
                                            tol)
    if injected:
        body["injected"] = [dict(r, injected=e["injected"]) for e in injected
                            for r in judge_against([e], [a for a in aa if a["config"] == e["config"]], tol)]
    print(f"{'config':<28} {'engines':>7} {'CV':>6} {'tol':>6} {'false alarms':>13} {'caught 2/3/5%':>24}")
    for cid, c in per_config.items():
        own = c["own"]
        caught = " ".join(c["caught_at_pooled_tolerance"].values())
        print(f"{cid:<28} {c['engine_starts']:>7} {own['cv_between_runs']:>6.2%} {tol:>6.2%} "
              f"{own['false_alarms']:>5}/{own['trials']:<7} {caught:>24}")
    for key in ("first_start", "injected"):
        for r in body.get(key, []):
            print(f"{key:<12} {r['config']:<28} {r['engine']:<8} {r['figure']:<30} {r['delta']:+.2%} {r['outcome']}")
    if not args.dry and "decode_tps" in pooled:
        path = BaselineStore(Path(args.baselines)).write_noise(args.key, body)
        print(f"noise model written: {path}")
    elif not args.dry:
        print("no decode_tps figure measured in two or more warm engines: noise.json not written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
