"""Which change-point detector finds a 1-5% step in run-to-run noise like the lanes' (2-10% CV)?

Synthetic histories: N runs of one figure, Gaussian noise at a given CV, a step of a given size at run N/2
(and no step, for false alarms). A detection counts when a change point lands within +-2 runs of the step.
Run with an interpreter that has all three libraries (they cannot share quantgate's venv: Otava pins
numpy 2.2, signal-processing-algorithms numpy<2 and setuptools<71):

    python benchmarks/changepoint_choice.py [--trials 40]

Results are written down in docs/benchmark-history.md.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def robust_sigma(x: np.ndarray) -> float:
    d = np.diff(x)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2))


def ruptures_pelt(x: np.ndarray, factor: float = 4.0) -> list[int]:
    import ruptures as rpt

    sigma = robust_sigma(x)
    pen = factor * np.log(len(x)) * sigma**2  # BIC-style penalty on the l2 cost, sigma from first differences
    return [i for i in rpt.Pelt(model="l2", min_size=3, jump=1).fit(x).predict(pen=pen) if i < len(x)]


def ruptures_pelt_bic(x: np.ndarray) -> list[int]:
    return ruptures_pelt(x, factor=2.0)


def ruptures_binseg(x: np.ndarray) -> list[int]:
    import ruptures as rpt

    sigma = robust_sigma(x)
    pen = 4.0 * np.log(len(x)) * sigma**2
    return [i for i in rpt.Binseg(model="l2", min_size=3, jump=1).fit(x).predict(pen=pen) if i < len(x)]


def otava_edivisive(x: np.ndarray) -> list[int]:
    from otava.analysis import compute_change_points

    cps, _ = compute_change_points(list(x), window_len=50, max_pvalue=0.001)
    return [cp.index for cp in cps]


def spa_edivisive(x: np.ndarray) -> list[int]:
    from signal_processing_algorithms.energy_statistics.energy_statistics import e_divisive

    return list(e_divisive(x, pvalue=0.01, permutations=100))


METHODS = {"ruptures-pelt-l2": ruptures_pelt, "ruptures-pelt-l2-bic": ruptures_pelt_bic,
           "ruptures-binseg-l2": ruptures_binseg, "otava-edivisive": otava_edivisive, "spa-edivisive": spa_edivisive}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    rng = np.random.default_rng(20261202)
    n, at = args.runs, args.runs // 2
    print(f"{n} runs, step at run {at}, {args.trials} trials per cell; hit = a change point within +-2 runs")
    steps = " ".join(f"{f'step {s}%':>8}" for s in (1, 2, 3, 5))
    print(f"{'method':20} {'cv':>4} {steps}   false-alarm  ms/call")
    warnings.simplefilter("ignore")
    for name, fn in METHODS.items():
        for cv in (0.02, 0.05, 0.10):
            cells = []
            spent, calls = 0.0, 0
            for step in (0.01, 0.02, 0.03, 0.05):
                hits = 0
                for _ in range(args.trials):
                    x = 100 * (1 + cv * rng.standard_normal(n))
                    x[at:] *= 1 - step
                    t = time.perf_counter()
                    cps = fn(x)
                    spent += time.perf_counter() - t
                    calls += 1
                    hits += any(abs(c - at) <= 2 for c in cps)
                cells.append(hits / args.trials)
            false = 0
            for _ in range(args.trials):
                x = 100 * (1 + cv * rng.standard_normal(n))
                t = time.perf_counter()
                false += bool(fn(x))
                spent += time.perf_counter() - t
                calls += 1
            print(f"{name:20} {cv:>4.0%} " + " ".join(f"{c:>8.0%}" for c in cells)
                  + f"   {false / args.trials:>11.0%}  {1000 * spent / calls:7.1f}", flush=True)


if __name__ == "__main__":
    main()
