"""The noise model from A/A runs, and what the gate can do with it on this machine.

`quantgate calibrate` measures the same configs K times, each run in fresh engines. From those runs:

- per metric, the between-run CV of the figures' medians and a tolerance of `sigmas` x that CV (clamped);
- the **false-alarm rate**: every run judged against a baseline recorded from every other run, by the
  gate's own `baselines.judge`, at that tolerance (an A/A trial can only fail falsely);
- the **smallest detectable slowdown**: the smallest slowdown s on a grid such that the same trials, with the
  measured run made s worse (throughput x (1 - s), latency x (1 + s)), are judged "fail" in at least
  `power` of them.

A trial is one run against another run's baseline, not against the pooled others: the gate's baseline is one
run's summary (`--update-baselines` records one session), so this is the comparison the gate really makes.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Any

from .baselines import Baseline, NoiseModel, judge
from .stats import Figure

#: slowdowns tried, as fractions of the baseline: 1% steps up to 95%
SLOWDOWN_GRID: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(1, 96))

Runs = list[dict[str, Figure]]  # per A/A run: "<config>/<figure name>" -> figure


@dataclass(frozen=True)
class MetricCalibration:
    metric: str
    cv_between_runs: float
    tolerance: float
    figures: int  # figures of this metric present in at least two runs
    trials: int  # (baseline run, measured run) pairs x figures
    false_alarms: int
    indeterminate: int
    detectable_slowdown: float | None  # None: not caught at `power` anywhere on the grid

    @property
    def false_alarm_rate(self) -> float:
        return self.false_alarms / self.trials if self.trials else float("nan")

    @property
    def indeterminate_rate(self) -> float:
        return self.indeterminate / self.trials if self.trials else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "cv_between_runs": round(self.cv_between_runs, 4), "tolerance": round(self.tolerance, 4),
            "figures": self.figures, "trials": self.trials, "false_alarms": self.false_alarms,
            "false_alarm_rate": round(self.false_alarm_rate, 4), "indeterminate": self.indeterminate,
            "indeterminate_rate": round(self.indeterminate_rate, 4),
            "detectable_slowdown": self.detectable_slowdown,
        }


@dataclass(frozen=True)
class Limits:
    sigmas: float = 3.0  # 3 sigma one-sided: about 1 false alarm in 740 figures if the noise is normal
    min_tolerance: float = 0.05
    max_tolerance: float = 0.60
    power: float = 0.80  # share of trials a slowdown must fail in to count as detectable


def tolerance_for(cvs: list[float], limits: Limits) -> tuple[float, float]:
    """(pooled between-run CV, tolerance) from the per-figure CVs of one metric."""
    pooled = (sum(c * c for c in cvs) / len(cvs)) ** 0.5
    return pooled, min(limits.max_tolerance, max(limits.min_tolerance, limits.sigmas * pooled))


def between_run_cv(medians: list[float]) -> float | None:
    """Sample CV of one figure's per-run medians; None when it cannot be computed."""
    if len(medians) < 2 or not statistics.fmean(medians):
        return None
    return statistics.stdev(medians) / abs(statistics.fmean(medians))


def slowed(figure: Figure, s: float) -> Figure:
    """The figure made s worse: a throughput times (1 - s), a latency times (1 + s)."""
    factor = (1 - s) if figure.higher_is_better else (1 + s)
    return replace(figure, samples=tuple(v * factor for v in figure.samples))


def _trial_outcomes(pairs: list[tuple[Figure, Figure]], noise: NoiseModel, s: float) -> list[str]:
    outcomes = []
    for base_fig, measured in pairs:
        baseline = Baseline("aa", "aa", {base_fig.name: base_fig.summary()})
        outcomes.append(judge("aa", slowed(measured, s) if s else measured, baseline, noise).outcome)
    return outcomes


def trial_pairs(runs: Runs, key: str) -> list[tuple[Figure, Figure]]:
    """Every (baseline run, measured run) pair of distinct runs that both have this figure."""
    present = [run[key] for run in runs if key in run]
    return [(b, m) for i, b in enumerate(present) for j, m in enumerate(present) if i != j]


def calibrate(runs: Runs, limits: Limits = Limits(), grid: tuple[float, ...] = SLOWDOWN_GRID
              ) -> dict[str, MetricCalibration]:
    """Per metric: tolerance from the between-run CV, then the gate's A/A false alarms and its power."""
    by_metric: dict[str, list[str]] = {}
    for key in sorted({k for run in runs for k in run}):
        fig = next(run[key] for run in runs if key in run)
        if fig.unit == "fraction":
            continue  # accuracy has its own absolute Wilson gate, not a CV tolerance
        by_metric.setdefault(fig.metric, []).append(key)
    out: dict[str, MetricCalibration] = {}
    for metric, keys in by_metric.items():
        cvs: list[float] = []
        pairs: list[tuple[Figure, Figure]] = []
        for key in keys:
            cv = between_run_cv([run[key].median for run in runs if key in run])
            if cv is not None:
                cvs.append(cv)
                pairs += trial_pairs(runs, key)
        if not cvs:
            continue
        pooled, tolerance = tolerance_for(cvs, limits)
        noise = NoiseModel({metric: tolerance}, tolerance, source="A/A calibration")
        aa = _trial_outcomes(pairs, noise, 0.0)
        detectable = next((s for s in grid
                           if _trial_outcomes(pairs, noise, s).count("fail") >= limits.power * len(pairs)), None)
        out[metric] = MetricCalibration(
            metric, pooled, tolerance, figures=len(cvs), trials=len(pairs), false_alarms=aa.count("fail"),
            indeterminate=aa.count("indeterminate"), detectable_slowdown=detectable)
    return out


def noise_body(results: dict[str, MetricCalibration], limits: Limits) -> dict[str, Any]:
    """The noise.json fields that come from calibration (the CLI adds hardware, configs and the date)."""
    return {
        "sigmas": limits.sigmas, "power": limits.power,
        "trial": "each run's figures judged by the gate against a baseline recorded from each other run",
        "metrics": {m: r.to_dict() for m, r in sorted(results.items())},
    }


def table(results: dict[str, MetricCalibration], power: float) -> str:
    """One line per metric for the terminal."""
    head = (f"{'metric':<20} {'CV':>6} {'tol':>6} {'false alarms':>16} {'indeterminate':>16} "
            f"{f'slowdown caught ({power:.0%})':>26}")
    lines = [head]
    for m, r in sorted(results.items()):
        caught = f">{SLOWDOWN_GRID[-1]:.0%} (none)" if r.detectable_slowdown is None else f"{r.detectable_slowdown:.0%}"
        lines.append(f"{m:<20} {r.cv_between_runs:>6.1%} {r.tolerance:>6.1%} "
                     f"{f'{r.false_alarms}/{r.trials} ({r.false_alarm_rate:.0%})':>16} "
                     f"{f'{r.indeterminate}/{r.trials} ({r.indeterminate_rate:.0%})':>16} {caught:>26}")
    return "\n".join(lines)

