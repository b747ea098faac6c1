"""Per-hardware baselines (baselines/<hardware>/<config>.json), the noise model, and verdicts against them."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import locks
from ..errors import QuantgateError
from ..stats import Figure, round_sig, worse_by

SCHEMA_VERSION = 1
NOISE_FILE = "noise.json"


# a gated figure's verdict; "invalid": quantgate.gate.validity found the measurement itself unsound
Outcome = Literal["pass", "fail", "indeterminate", "missing", "updated", "unwritten", "invalid"]


class BaselineError(QuantgateError, ValueError):
    """A baseline file is missing, corrupt, from another schema or another machine."""


@dataclass(frozen=True)
class Baseline:
    config_id: str
    hardware: str
    figures: dict[str, dict[str, Any]]
    kernels: dict[str, Any] | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    taken_at: str = ""
    run_id: str = ""
    imported_from: str | None = None  # a document, when figures were copied from a hand-made table

    def to_json(self) -> str:
        body = {
            "schema": SCHEMA_VERSION,
            "config": self.config_id,
            "hardware": self.hardware,
            "taken_at": self.taken_at,
            "run_id": self.run_id,
            "imported_from": self.imported_from,
            "environment": self.environment,
            "kernels": self.kernels,
            "figures": self.figures,
        }
        return json.dumps(body, indent=2, sort_keys=True, allow_nan=True) + "\n"


@dataclass(frozen=True)
class Verdict:
    config_id: str
    figure: str
    unit: str
    outcome: Outcome
    measured: float
    baseline: float | None = None
    delta: float | None = None  # (measured - baseline) / baseline
    tolerance: float | None = None
    tolerance_source: str = ""
    kernel_diff: tuple[str, ...] = ()
    spread: float | None = None  # measured CV
    interval: tuple[float, float] | None = None  # one-sided 95% bounds of "worse by", as fractions
    notes: tuple[str, ...] = ()  # said with every message: versions that changed since the baseline, ...

    def message(self) -> str:
        text = self._message()
        return text + "".join(f"; {n}" for n in self.notes)

    def _message(self) -> str:
        head = f"config {self.config_id!r} {self.figure}"
        if self.outcome == "invalid":  # quantgate.gate.validity: the reason is the verdict's first note
            return f"{head}: figures INVALID, neither pass nor fail (measured {self.measured:.4g} {self.unit})"
        if self.outcome == "missing":
            return (f"{head}: no baseline (measured {self.measured:.4g} {self.unit}); "
                    f"record one with `pytest --update-baselines`")
        if self.outcome == "updated" or self.baseline is None or self.delta is None or self.tolerance is None:
            was = "" if self.baseline is None else f" (was {self.baseline:.4g})"
            return f"{head}: baseline recorded, {self.measured:.4g} {self.unit}{was}"
        verb = {"fail": "regressed", "indeterminate": "indeterminate (too noisy to tell)"}.get(
            self.outcome, "within tolerance")
        text = (f"{head} {verb}: baseline {self.baseline:.4g} {self.unit}, measured {self.measured:.4g} "
                f"{self.unit}, delta {self.delta:+.1%} (tolerance {self.tolerance:.1%}, {self.tolerance_source})")
        if self.interval is not None and self.outcome != "pass":
            text += f"; worse by {self.interval[0]:+.1%}..{self.interval[1]:+.1%} (95%)"
        if self.kernel_diff:
            text += "; kernels changed: " + "; ".join(self.kernel_diff)
        return text


@dataclass(frozen=True)
class NoiseModel:
    """Tolerance per metric, measured on this hardware by `quantgate calibrate` (A/A runs)."""

    tolerances: dict[str, float]
    default: float
    source: str = "default"
    sources: dict[str, str] = field(default_factory=dict)  # a metric whose tolerance came from elsewhere

    def tolerance(self, metric: str) -> tuple[float, str]:
        if metric in self.tolerances:
            return self.tolerances[metric], self.sources.get(metric, self.source)
        return self.default, "default tolerance (no calibration for this metric)"


def atomic_write(path: Path, text: str) -> None:
    """Write beside the target, fsync, rename: a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialize read-merge-write of one baseline across pytest-xdist workers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with locks.locked(path.parent / f".{path.name}.lock"):
        yield


class BaselineStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, hardware: str, config_id: str) -> Path:
        return self.root / hardware / f"{config_id}.json"

    def load(self, hardware: str, config_id: str) -> Baseline | None:
        path = self.path(hardware, config_id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BaselineError(f"{path}: corrupt baseline ({exc}); restore it from git or rerun "
                                f"with --update-baselines") from None
        except OSError as exc:  # a folder where the file should be, a file where the folder should be
            raise BaselineError(f"{path}: unreadable baseline ({exc.strerror or exc})") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise BaselineError(f"{path}: baseline schema {found!r}, this quantgate reads schema "
                                f"{SCHEMA_VERSION}; rerun with --update-baselines")
        if data.get("hardware") != hardware or data.get("config") != config_id:
            raise BaselineError(f"{path}: holds config {data.get('config')!r} for hardware "
                                f"{data.get('hardware')!r}, expected {config_id!r} on {hardware!r}")
        figures = data.get("figures")
        if not isinstance(figures, dict):
            raise BaselineError(f"{path}: 'figures' must be an object")
        return Baseline(
            config_id=config_id, hardware=hardware, figures=figures, kernels=data.get("kernels"),
            environment=data.get("environment") or {}, taken_at=data.get("taken_at", ""),
            run_id=data.get("run_id", ""), imported_from=data.get("imported_from"),
        )

    def update(
        self, hardware: str, config_id: str, figures: list[Figure], kernels: dict[str, Any] | None,
        environment: dict[str, Any], run_id: str,
    ) -> Path:
        """Merge this run's figures into the config's file: figures this run did not measure are kept."""
        path = self.path(hardware, config_id)
        with locked(path):
            try:
                old = self.load(hardware, config_id)
            except BaselineError:
                old = None  # a corrupt or foreign file is replaced by the fresh measurement
            merged = dict(old.figures) if old and not old.imported_from else {}
            merged.update({f.name: f.summary() for f in figures})
            baseline = Baseline(
                config_id=config_id, hardware=hardware, figures=dict(sorted(merged.items())),
                kernels=kernels if kernels is not None else (old.kernels if old else None),
                environment=environment, run_id=run_id,
                taken_at=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            atomic_write(path, baseline.to_json())
        return path

    def kinds(self) -> list[str]:
        """Hardware ids with at least one recorded config baseline (a noise model alone does not count)."""
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in self.root.iterdir()
                      if d.is_dir() and any(p.name != NOISE_FILE for p in d.glob("*.json")))

    def has_noise(self, hardware: str) -> bool:
        return (self.root / hardware / NOISE_FILE).is_file()

    def noise(self, hardware: str, default: float) -> NoiseModel:
        path = self.root / hardware / NOISE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return NoiseModel({}, default)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BaselineError(f"{path}: corrupt noise model ({exc}); rerun `quantgate calibrate`") from None
        except OSError as exc:
            raise BaselineError(f"{path}: unreadable noise model ({exc.strerror or exc})") from None
        return NoiseModel(_noise_tolerances(path, data), default,
                          source=f"{path.name}: A/A noise x{data.get('k', 3) if isinstance(data, dict) else 3}")

    def write_noise(self, hardware: str, body: dict[str, Any]) -> Path:
        path = self.root / hardware / NOISE_FILE
        atomic_write(path, json.dumps(body, indent=2, sort_keys=True) + "\n")
        return path


MAX_TOLERANCE = 1.0  # a fraction of the baseline: above 1.0 a 10x slowdown (worse by 0.9) passes unseen


def _noise_tolerances(path: Path, data: Any) -> dict[str, float]:
    """Per-metric tolerances from noise.json, each in (0, MAX_TOLERANCE]: a hand-edited or corrupt file must
    not switch the gate off."""
    metrics = data.get("metrics", {}) if isinstance(data, dict) else None
    if not isinstance(metrics, dict):
        raise BaselineError(f"{path}: noise model 'metrics' must be an object; rerun `quantgate calibrate`")
    out: dict[str, float] = {}
    for metric, entry in metrics.items():
        tol = entry.get("tolerance") if isinstance(entry, dict) else None
        if (not isinstance(tol, (int, float)) or isinstance(tol, bool) or not math.isfinite(tol)
                or not 0 < tol <= MAX_TOLERANCE):
            raise BaselineError(f"{path}: metric {metric!r} tolerance {tol!r} is out of bounds (0 < t <= "
                                f"{MAX_TOLERANCE:g}: above that a 10x slowdown passes); rerun `quantgate calibrate`")
        out[metric] = float(tol)
    return out
def version_changes(baseline: Baseline | None, versions: dict[str, str]) -> list[str]:
    """'vllm 0.26.0 -> 0.27.0' for every speed-moving version the baseline recorded that differs now (a
    version the baseline did not record, or this run lacks, is not a change: older baselines lack some)."""
    if baseline is None:
        return []
    old = baseline.environment.get("versions") or {}
    return [f"{k} {old[k]} -> {versions[k]}" for k in sorted(old)
            if k in versions and k != "quantgate" and str(old[k]) != str(versions[k])]


def foreign_baselines(root: Path, hardware_id: str, key: str, config_id: str) -> list[str]:
    """Folders of other GPU models of the same marker (sm90-h100 beside sm90-h200) that hold this config."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and p.name != key and (p.name == hardware_id or p.name.startswith(hardware_id + "-"))
                  and (p / f"{config_id}.json").is_file())


Z_ONE_SIDED_95 = 1.645


def median_standard_error(cv: float, n: int) -> float:
    """Relative standard error of a median of n samples with robust CV `cv` (1.2533 sigma / sqrt(n))."""
    if n <= 0 or math.isnan(cv):
        return math.inf
    return 1.2533 * cv / math.sqrt(n)


def judge(
    config_id: str, figure: Figure, baseline: Baseline | None, noise: NoiseModel,
    kernel_diff: tuple[str, ...] = (),
) -> Verdict:
    """Fail only when the figure is worse than the baseline by more than the tolerance (the smallest effect
    that matters, set from A/A noise) and a one-sided 95% interval says it is worse at all; say
    "indeterminate" when this run's own spread is too wide to tell."""
    measured = figure.median
    base = baseline.figures.get(figure.name) if baseline else None
    if base is None or base.get("median") is None:
        return Verdict(config_id, figure.name, figure.unit, "missing", measured, kernel_diff=kernel_diff)
    if figure.unit == "fraction":
        return _judge_fraction(config_id, figure, base, noise, kernel_diff)
    base_median = float(base["median"])
    tolerance, source = noise.tolerance(figure.metric)
    worse = worse_by(measured, base_median, figure.higher_is_better)
    se = math.hypot(median_standard_error(figure.cv if len(figure.samples) > 1 else 0.0, len(figure.samples)),
                    median_standard_error(float(base.get("cv") or 0.0), int(base.get("n") or 1)))
    low, high = worse - Z_ONE_SIDED_95 * se, worse + Z_ONE_SIDED_95 * se
    outcome: Outcome
    if math.isnan(worse):
        outcome = "fail"
    elif worse > tolerance:
        outcome = "fail" if low > 0 else "indeterminate"
    elif high > 2 * tolerance:
        outcome = "indeterminate"  # cannot rule out a regression of twice the tolerance
    else:
        outcome = "pass"
    return Verdict(
        config_id, figure.name, figure.unit, outcome, measured, base_median,
        delta=(measured - base_median) / base_median if base_median else math.nan,
        tolerance=tolerance, tolerance_source=source, kernel_diff=kernel_diff,
        spread=round_sig(figure.cv) if figure.samples else None,
        interval=(round_sig(low), round_sig(high)),
    )


ACCURACY_TOLERANCE = 0.08  # absolute, vLLM's accuracy gate default


def _judge_fraction(config_id: str, figure: Figure, base: dict[str, Any], noise: NoiseModel,
                    kernel_diff: tuple[str, ...]) -> Verdict:
    """Accuracy (samples are per-problem 0/1): vLLM's gate="ci" against baseline minus an absolute tolerance,
    with a Wilson interval instead of a median comparison."""
    from ..workload.accuracy import gate_accuracy

    k, n = int(sum(figure.samples)), len(figure.samples)
    base_acc = float(base.get("mean", base["median"]))
    tolerance = noise.tolerances.get(figure.metric, ACCURACY_TOLERANCE)
    v = gate_accuracy(k, n, threshold=base_acc - tolerance)
    return Verdict(
        config_id, figure.name, figure.unit, v.outcome, k / n if n else math.nan, base_acc,
        delta=(k / n - base_acc) / base_acc if base_acc and n else math.nan, tolerance=tolerance,
        tolerance_source=f"absolute, Wilson {int(v.confidence * 100)}% bounds {v.lower:.3f}..{v.upper:.3f}",
        kernel_diff=kernel_diff,
    )
