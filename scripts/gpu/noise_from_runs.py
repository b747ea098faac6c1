"""baselines/<hw>/noise.json from runs already made: the A/A statistic of `quantgate calibrate`, offline.

Every results/<run>/<config>/figures.json of the same hardware is one fresh-engine measurement of that config;
a figure measured in two or more runs gives a between-run CV of its medians, pooled per metric (RMS), and the
tolerance is SIGMAS x pooled CV, clamped to [MIN, 0.6] (the same arithmetic as cli._cmd_calibrate).

    python scripts/gpu/noise_from_runs.py HW OUT_JSON RESULTS_DIR... [--sigmas 3] [--min 0.05]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("hardware")
    ap.add_argument("out")
    ap.add_argument("results", nargs="+")
    ap.add_argument("--sigmas", type=float, default=3.0)
    ap.add_argument("--min", type=float, default=0.05)
    args = ap.parse_args()
    medians: dict[tuple[str, str], list[float]] = {}
    runs: set[str] = set()
    for root in args.results:
        for path in sorted(Path(root).glob("*/*/figures.json")):
            body = json.loads(path.read_text())
            if body.get("hardware") != args.hardware:
                continue
            runs.add(body["run_id"])
            for name, fig in body["figures"].items():
                if fig.get("gated") and isinstance(fig.get("median"), (int, float)):
                    medians.setdefault((body["config"], name), []).append(float(fig["median"]))
    per_metric: dict[str, list[float]] = {}
    k_max = 0
    for (_, name), values in medians.items():
        if len(values) < 2 or not statistics.fmean(values):
            continue
        k_max = max(k_max, len(values))
        cv = statistics.stdev(values) / abs(statistics.fmean(values))
        per_metric.setdefault(name.split("[", 1)[0], []).append(cv)
    metrics = {}
    for metric, cvs in sorted(per_metric.items()):
        pooled = (sum(c * c for c in cvs) / len(cvs)) ** 0.5
        metrics[metric] = {"cv_between_runs": round(pooled, 4), "figures": len(cvs),
                           "tolerance": round(min(0.6, max(args.min, args.sigmas * pooled)), 4)}
    configs = sorted({c for c, _ in medians})
    body = {"hardware": args.hardware, "k": k_max, "configs": configs, "sigmas": args.sigmas,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "metrics": metrics,
            "runs": sorted(runs),
            "method": "offline A/A over existing runs (scripts/gpu/noise_from_runs.py); each config measured "
                      "in 2-3 fresh engines"}
    Path(args.out).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
