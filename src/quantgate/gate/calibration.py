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

Those in-sample pairs all come from one calibration session. In real use the gate compares today's run with a
baseline recorded in another session (the stored `baselines/<hw>/<config>.json`), and session-to-session drift
adds to the noise. So when the store has a baseline for a calibrated config, `cross_session` judges every A/A
run's figures against it, at this calibration's tolerance and at the tolerance the gate uses today: the
**cross-session false-alarm rate** (every such trial is A/A, same config and code, so any fail is false), the
median shift between the sessions, and the tolerance that would have given no cross-session false alarm.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..config.matrix import Matrix
from ..stats import Figure, worse_by
from .baselines import Baseline, NoiseModel, Outcome, Verdict, judge

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


def calibrated_noise(metric: str, tolerance: float) -> NoiseModel:
    """The noise model of one metric at the tolerance a calibration computed."""
    return NoiseModel({metric: tolerance}, tolerance, source="A/A calibration")


def _trial_outcomes(pairs: list[tuple[Figure, Figure]], noise: NoiseModel, s: float) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for base_fig, measured in pairs:
        baseline = Baseline("aa", "aa", {base_fig.name: base_fig.summary()})
        outcomes.append(judge("aa", slowed(measured, s) if s else measured, baseline, noise).outcome)
    return outcomes


def trial_pairs(runs: Runs, key: str) -> list[tuple[Figure, Figure]]:
    """Every (baseline run, measured run) pair of distinct runs that both have this figure."""
    present = [run[key] for run in runs if key in run]
    return [(b, m) for i, b in enumerate(present) for j, m in enumerate(present) if i != j]


def default_configs(matrices: Sequence[Matrix], hardware_id: str) -> list[str]:
    """What `quantgate calibrate` measures when no --config is given: per matrix, the gate's reference, then
    the first config of each quantization path not yet covered. Only configs that run here and are not
    expected to fail here, without speculative decoding (its acceptance varies per prompt, not per session)."""
    out: list[str] = []
    for matrix in matrices:
        # gated here: neither expected to fail nor skipped as expected slow (fp8 at 0.5 tok/s on cpu-amx)
        usable = [c for c in matrix.for_hardware(hardware_id) if c.speculative is None and c.gated_on(hardware_id)]
        ref = next((c for c in usable if c.id == matrix.gate.reference), None)
        seen = {ref.quantization} if ref else set()
        out += [ref.id] if ref else []
        for cfg in usable:
            if cfg.quantization not in seen:
                seen.add(cfg.quantization)
                out.append(cfg.id)
    return out


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
        noise = calibrated_noise(metric, tolerance)
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



# --- across sessions: the A/A runs against the stored baseline ----------------------------------------------

@dataclass(frozen=True)
class Tally:
    """Cross-session A/A trials of one metric judged at one tolerance: every fail is a false alarm."""

    tolerances: tuple[float, ...]  # as the verdicts give them: one value unless configs' defaults differ
    source: str
    false_alarms: int
    indeterminate: int

    def to_dict(self, trials: int) -> dict[str, Any]:
        return {
            "tolerance": [round(t, 4) for t in self.tolerances], "tolerance_source": self.source,
            "false_alarms": self.false_alarms, "indeterminate": self.indeterminate,
            "false_alarm_rate": round(self.false_alarms / trials, 4) if trials else None,
        }

    def cells(self, trials: int) -> tuple[str, str, str]:
        tol = "/".join(f"{t:.1%}" for t in self.tolerances)
        return tol, f"{self.false_alarms}/{trials} ({self.false_alarms / trials:.0%})", \
            f"{self.indeterminate}/{trials} ({self.indeterminate / trials:.0%})"


@dataclass(frozen=True)
class CrossSession:
    metric: str
    gated: bool  # whether the gate judges this metric's figures (the CPU lane gates rel_decode_tps only)
    trials: int  # A/A runs x figures judged against the stored baseline
    missing: int  # figures measured but absent from the stored baseline: not trials
    calibrated: Tally  # at the tolerance this calibration computed
    gate: Tally  # at the tolerance the gate uses today (noise.json as it was, or the matrix default)
    median_shift: float  # median over trials of run median / baseline median - 1
    worst_shift: float  # the largest "worse by" (positive: this session worse than the baseline's)

    @property
    def zero_alarm_tolerance(self) -> float:
        """The smallest whole-percent tolerance at which no trial is worse by more than it: no false alarm."""
        worst = max(self.worst_shift, 0.0)
        tolerance = math.ceil(round(worst * 100, 9)) / 100
        return tolerance if tolerance >= worst else tolerance + 0.01

    def to_dict(self) -> dict[str, Any]:
        return {
            "gated": self.gated, "trials": self.trials, "missing": self.missing,
            "median_shift": round(self.median_shift, 4), "worst_shift": round(self.worst_shift, 4),
            "at_calibrated_tolerance": self.calibrated.to_dict(self.trials),
            "at_gate_tolerance": self.gate.to_dict(self.trials),
            "zero_false_alarm_tolerance": self.zero_alarm_tolerance,
        }


def _tally(verdicts: list[Verdict]) -> Tally:
    outcomes = [v.outcome for v in verdicts]
    return Tally(tuple(sorted({v.tolerance for v in verdicts if v.tolerance is not None})),
                 "; ".join(sorted({v.tolerance_source for v in verdicts})),
                 outcomes.count("fail"), outcomes.count("indeterminate"))


def cross_session(runs: Runs, stored: dict[str, Baseline | None], gate: dict[str, NoiseModel],
                  results: dict[str, MetricCalibration]) -> dict[str, CrossSession]:
    """Per calibrated metric: every run's figures ("<config>/<figure>") judged by the gate's `judge` against
    the stored baseline of its config, at the calibrated tolerance and with the gate's own noise model
    (`gate`, per config). Configs whose `stored` baseline is None are not judged: no trial, not a pass."""
    by_metric: dict[str, tuple[list[Verdict], list[Verdict], list[Figure]]] = {}
    missing: dict[str, int] = {}
    for run in runs:
        for key, fig in sorted(run.items()):
            config_id = key.partition("/")[0]
            baseline = stored.get(config_id)
            if baseline is None or fig.metric not in results:
                continue
            at_calibrated = judge(config_id, fig, baseline, calibrated_noise(fig.metric, results[fig.metric].tolerance))
            if at_calibrated.outcome == "missing":
                missing[fig.metric] = missing.get(fig.metric, 0) + 1
                continue
            calibrated, today, figures = by_metric.setdefault(fig.metric, ([], [], []))
            calibrated.append(at_calibrated)
            today.append(judge(config_id, fig, baseline, gate[config_id]))
            figures.append(fig)
    out: dict[str, CrossSession] = {}
    for metric in sorted(set(by_metric) | set(missing)):
        calibrated, today, figures = by_metric.get(metric, ([], [], []))
        shifts = [v.delta for v in calibrated if v.delta is not None and not math.isnan(v.delta)]
        worse = [worse_by(v.measured, v.baseline, f.higher_is_better) for v, f in zip(calibrated, figures, strict=True)
                 if v.baseline is not None]
        worse = [w for w in worse if not math.isnan(w)]
        out[metric] = CrossSession(
            metric, gated=any(f.gated for f in figures), trials=len(calibrated), missing=missing.get(metric, 0),
            calibrated=_tally(calibrated), gate=_tally(today),
            median_shift=statistics.median(shifts) if shifts else math.nan,
            worst_shift=max(worse) if worse else math.nan)
    return out


def provenance(baseline: Baseline | None) -> dict[str, Any] | None:
    """When and with what the stored baseline was recorded (None: there is none)."""
    if baseline is None:
        return None
    versions = baseline.environment.get("versions") or {}
    vllm = {k: v for k, v in versions.items() if k.startswith("vllm")}
    if not vllm and (baseline.kernels or {}).get("vllm_version"):
        vllm = {"vllm": baseline.kernels["vllm_version"]}  # type: ignore[index]
    return {"taken_at": baseline.taken_at or None, "run_id": baseline.run_id or None, "vllm": vllm or None,
            "imported_from": baseline.imported_from}


def cross_session_body(xs: dict[str, CrossSession], stored: dict[str, Baseline | None]) -> dict[str, Any]:
    """noise.json's "cross_session" key: the stored baselines judged against and the per-metric tallies."""
    return {
        "trial": "each A/A run's figures judged by the gate against the stored baseline (another session)",
        "baselines": {c: provenance(b) for c, b in sorted(stored.items())},
        "no_baseline": sorted(c for c, b in stored.items() if b is None),
        "metrics": {m: x.to_dict() for m, x in sorted(xs.items())},
    }


def cross_table(xs: dict[str, CrossSession], stored: dict[str, Baseline | None]) -> str:
    """The cross-session false alarms for the terminal, after `table`."""
    lines = ["cross-session: each A/A run judged against the stored baseline (recorded in another session)"]
    for config_id, baseline in sorted(stored.items()):
        p = provenance(baseline)
        if p is None:
            lines.append(f"  {config_id}: no stored baseline on this hardware: not judged (no trials)")
            continue
        vllm = ", ".join(f"{k} {v}" for k, v in sorted((p["vllm"] or {}).items())) or "vLLM version not recorded"
        lines.append(f"  {config_id}: baseline taken {p['taken_at'] or '(time not recorded)'}, {vllm}"
                     + (f", imported from {p['imported_from']}" if p["imported_from"] else ""))
    if not xs:
        return "\n".join(lines)
    lines.append(f"{'metric':<20} {'trials':>6} {'shift':>7} {'worst':>7} {'cal tol':>8} {'false alarms':>13} "
                 f"{'indeterminate':>13} {'gate tol':>9} {'false alarms':>13} {'indeterminate':>13} "
                 f"{'0 alarms at':>11}")
    for m, x in sorted(xs.items()):
        name = m + ("" if x.gated else "*")
        if not x.trials:
            lines.append(f"{name:<20} {0:>6}  no figure in the stored baseline ({x.missing} measured)")
            continue
        lines.append(f"{name:<20} {x.trials:>6} {x.median_shift:>+7.1%} {x.worst_shift:>+7.1%} "
                     + " ".join(f"{a:>{w1}} {b:>13} {c:>13}" for (a, b, c), w1 in
                                ((x.calibrated.cells(x.trials), 8), (x.gate.cells(x.trials), 9)))
                     + f" {x.zero_alarm_tolerance:>11.0%}")
    lines.append("shift: median of run median / baseline median - 1; worst: the largest shift in the worse "
                 "direction; 0 alarms at: the tolerance that would have given no cross-session false alarm "
                 "(a recommendation, not applied)" + ("; *: not gated" if any(not x.gated for x in xs.values())
                                                      else ""))
    return "\n".join(lines)
