"""Run history: every run's figures appended beside the baselines, read back as series with change points.

One baseline catches a step; a drift of 1% a week never crosses a tolerance. So each run appends one JSON
line per config to `baselines/<hw>/history/<config>.jsonl` (or a folder of one's choosing), and
`quantgate history` prints and plots each figure over the runs, marking baseline refreshes, runs whose
environment changed (vLLM, torch, driver ...) and the change points a detector finds.

Two writers (two CI jobs, xdist controllers of two runs) may append at once: each line goes out as one
write(2) on an O_APPEND descriptor, which the kernel places whole at the end of the file; a reader skips a
line it cannot parse (a writer killed mid-line on a file system without that guarantee) and says so.

The detector is ruptures' PELT on the l2 cost with a BIC-like penalty (docs/benchmark-history.md has the
measurement behind the choice: it matches Otava's and MongoDB's E-divisive on synthetic 1-5% steps and is the
only one of the three that installs beside vLLM, whose numpy the other two pin away from).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import QuantgateError
from ..stats import round_sig

if TYPE_CHECKING:
    from ..gate.baselines import Verdict
    from ..measurement import Measurement
    from ..session import Run

ENV_KEYS_IGNORED = ("quantgate",)  # our own version moves with every commit; not an environment change
MIN_SEGMENT = 3  # runs on each side of a change point


class HistoryError(QuantgateError, ValueError):
    """A history folder or entry that cannot be used."""


@dataclass(frozen=True)
class Entry:
    """One config's figures from one run."""

    run_id: str
    at: str
    hardware: str
    config: str
    figures: dict[str, dict[str, Any]]  # name -> {"value", "unit", "higher_is_better", "n", "cv", "gated"}
    environment: dict[str, str] = field(default_factory=dict)  # versions and driver
    baseline_refresh: bool = False  # this run rewrote the baseline (--update-baselines)
    baseline_run: str | None = None  # the run the stored baseline came from, when this run was judged
    commit: str | None = None

    def to_line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), default=str) + "\n"

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Entry:
        return cls(**{k: body[k] for k in cls.__dataclass_fields__ if k in body})


class HistoryStore:
    """A folder of `<config>.jsonl` files, one line per run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.skipped: list[str] = []  # "file:line" of lines that could not be read

    def path(self, config_id: str) -> Path:
        if not re.fullmatch(r"[\w.+-]+", config_id):
            raise HistoryError(f"config id {config_id!r} cannot name a history file")
        return self.root / f"{config_id}.jsonl"

    def append(self, entry: Entry) -> Path:
        path = self.path(entry.config)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = entry.to_line().encode("utf-8")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)  # one write: the line lands whole at the end, whoever else appends
        finally:
            os.close(fd)
        if written != len(data):
            raise HistoryError(f"{path}: short append ({written} of {len(data)} bytes; disk full?)")
        return path

    def configs(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.jsonl"))

    def load(self, config_id: str) -> list[Entry]:
        path = self.path(config_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append(Entry.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError) as exc:
                self.skipped.append(f"{path}:{number} ({exc})")
        return entries


def environment_of(run: Run) -> dict[str, str]:
    env = {k: v for k, v in run.hardware.versions.items() if k not in ENV_KEYS_IGNORED}
    if run.hardware.driver:
        env["driver"] = run.hardware.driver
    return env


def entry_for(run: Run, m: Measurement, refresh: bool, commit: str | None = None) -> Entry:
    try:
        base = run.baseline(m.config.id)
    except Exception:  # a corrupt baseline: the history still records what was measured
        base = None
    figures = {
        name: {"value": round_sig(f.value), "unit": f.unit, "higher_is_better": f.higher_is_better,
               "n": len(f.samples), "cv": round_sig(f.cv), "gated": f.gated}
        for name, f in sorted(m.figures.items())
    }
    return Entry(run_id=run.run_id, at=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                 hardware=run.baseline_key, config=m.config.id, figures=figures, environment=environment_of(run),
                 baseline_refresh=refresh, baseline_run=base.run_id if base is not None else None, commit=commit)


# --- series and change points -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    run_id: str
    at: str
    value: float
    refresh: bool  # a baseline refresh at or before this run (since the previous one)
    env_change: tuple[str, ...]  # "vllm 0.31.0 -> 0.32.0", ...


@dataclass(frozen=True)
class Series:
    config: str
    figure: str
    unit: str
    higher_is_better: bool
    points: tuple[Point, ...]
    change_points: tuple[int, ...]  # index of the first run after each step


def env_changes(before: dict[str, str], after: dict[str, str]) -> tuple[str, ...]:
    keys = sorted(set(before) | set(after))
    return tuple(f"{k} {before.get(k, '-')} -> {after.get(k, '-')}" for k in keys if before.get(k) != after.get(k))


def series(entries: Sequence[Entry], figure: str) -> Series | None:
    """The figure over the runs that measured it, oldest first, with its marks and change points."""
    rows = [e for e in entries if figure in e.figures]
    if not rows:
        return None
    points: list[Point] = []
    prev: Entry | None = None
    for e in rows:
        refresh = e.baseline_refresh or (prev is not None and e.baseline_run != prev.baseline_run
                                         and not prev.baseline_refresh)
        changed = env_changes(prev.environment, e.environment) if prev is not None else ()
        points.append(Point(e.run_id, e.at, float(e.figures[figure].get("value", math.nan)), refresh, changed))
        prev = e
    meta = rows[-1].figures[figure]
    values = [p.value for p in points]
    return Series(rows[-1].config, figure, str(meta.get("unit", "")), bool(meta.get("higher_is_better", True)),
                  tuple(points), tuple(change_points(values)))


def change_points(values: Sequence[float], min_size: int = MIN_SEGMENT, penalty_factor: float = 4.0) -> list[int]:
    """Indices where a new level begins (ruptures PELT, l2 cost, penalty factor * log n * sigma^2 with sigma
    from the median absolute first difference, so one outlier run neither sets the noise nor a step)."""
    import numpy as np
    import ruptures as rpt

    index = [i for i, v in enumerate(values) if not math.isnan(v) and not math.isinf(v)]
    if len(index) < 2 * min_size:
        return []
    x = np.asarray([values[i] for i in index], dtype=float)
    diffs = np.diff(x)
    sigma = 1.4826 * float(np.median(np.abs(diffs - np.median(diffs)))) / math.sqrt(2)
    sigma = max(sigma, 1e-3 * abs(float(np.median(x))), 1e-12)  # a noiseless series still has a scale
    penalty = penalty_factor * math.log(len(x)) * sigma**2
    ends = rpt.Pelt(model="l2", min_size=min_size, jump=1).fit(x).predict(pen=penalty)
    return [index[e] for e in ends if e < len(x)]


def segment_levels(s: Series) -> list[tuple[int, int, float]]:
    """(start, end exclusive, median) of each segment between change points."""
    bounds = [0, *s.change_points, len(s.points)]
    out = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        vals = sorted(p.value for p in s.points[a:b] if not math.isnan(p.value))
        if vals:
            mid = len(vals) // 2
            out.append((a, b, vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2))
    return out


def describe(s: Series) -> list[str]:
    """A table of the series: one line per run with its value, the change from the previous run, its marks."""
    direction = "higher" if s.higher_is_better else "lower"
    lines = [f"{s.config}  {s.figure}  ({s.unit}, {direction} is better; {len(s.points)} runs)"]
    levels = {a: level for a, _, level in segment_levels(s)}
    prev_level: float | None = None
    for i, p in enumerate(s.points):
        marks = []
        if i in s.change_points and prev_level is not None and prev_level:
            step = levels[i] / prev_level - 1
            marks.append(f"CHANGE POINT: level {prev_level:.4g} -> {levels[i]:.4g} ({step:+.1%})")
        if p.refresh:
            marks.append("baseline refresh")
        if p.env_change:
            marks.append("env: " + ", ".join(p.env_change))
        prev = s.points[i - 1].value if i else math.nan
        delta = f"{p.value / prev - 1:+7.1%}" if i and prev and not math.isnan(prev) else " " * 7
        lines.append(f"  {i:3d} {p.run_id:24} {p.value:12.4g} {delta}  {'; '.join(marks)}".rstrip())
        if i in levels:
            prev_level = levels[i]
    return lines


def plot(s: Series, path: Path) -> Path:
    """PNG of the series: values, segment levels, change points (red), refreshes (grey), env changes (blue)."""
    from .plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    xs = list(range(len(s.points)))
    ax.plot(xs, [p.value for p in s.points], "o-", ms=3, lw=1, color="#333333", label=s.figure)
    for a, b, level in segment_levels(s):
        ax.hlines(level, a - 0.4, b - 0.6, colors="#2a7", lw=2)
    for i in s.change_points:
        ax.axvline(i - 0.5, color="#d22", lw=1.5, label="change point" if i == s.change_points[0] else None)
    first = True
    for i, p in enumerate(s.points):
        if p.refresh:
            ax.axvline(i, color="#888", ls="--", lw=1, label="baseline refresh" if first else None)
            first = False
    first = True
    for i, p in enumerate(s.points):
        if p.env_change:
            ax.axvline(i, color="#26c", ls=":", lw=1.5, label="environment changed" if first else None)
            ax.annotate("\n".join(p.env_change), (i, ax.get_ylim()[1]), fontsize=6, va="top", color="#26c")
            first = False
    ax.set_xlabel("run")
    ax.set_ylabel(s.unit)
    ax.set_title(f"{s.config}: {s.figure}", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return _save(plt, fig, path)


def plot_name(figure: str) -> str:
    return re.sub(r"[^\w.=,-]+", "_", figure).strip("_") + ".png"


# --- one session's part ------------------------------------------------------------------------------------
def default_root(run: Run) -> Path:
    return run.settings.baselines_dir / run.baseline_key / "history"  # beside the baselines (sm90-h200)


def record(run: Run, measured: Iterable[Measurement], verdicts: Iterable[Verdict], refresh: bool,
           root: Path | None = None) -> dict[tuple[str, str], Path]:
    """Append this run's figures to the history, then plot the history of every failing figure into
    results/<run>/history/ for the report to link. Returns {(config, figure): png}."""
    from .benchjson import commit_info

    store = HistoryStore(root or default_root(run))
    commit = commit_info().get("id")
    for m in measured:
        store.append(entry_for(run, m, refresh, commit))
    plots: dict[tuple[str, str], Path] = {}
    for v in verdicts:
        if v.outcome != "fail" or (v.config_id, v.figure) in plots:
            continue
        s = series(store.load(v.config_id), v.figure)
        if s is not None:
            plots[(v.config_id, v.figure)] = plot(s, run.results / "history" / v.config_id / plot_name(v.figure))
    return plots
