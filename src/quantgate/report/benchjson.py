"""A run's figures in pytest-benchmark's JSON schema, for the tools that chart benchmark history.

`pytest-benchmark compare`, github-action-benchmark (`tool: pytest`) and Bencher (`--adapter python_pytest`)
all read the file pytest-benchmark writes with `--benchmark-json`. We build the same document: `machine_info`
and `commit_info` from pytest-benchmark's own generators, and one benchmark per figure whose `stats` come from
pytest-benchmark's own `Stats` over the raw samples, so the schema cannot drift from the installed version.

pytest-benchmark's numbers are times per round (lower is better; `ops` = 1 / mean is "bigger is better"), and
those tools read them so. A figure is therefore written as a time-like quantity, always lower-is-better:
  - higher-is-better rates and ratios (tok/s, x ref, acceptance tokens): the reciprocal of each sample
    (seconds per token), so `ops` is the harmonic mean of the samples, in the figure's own unit;
  - fractions (per-item 0/1 scores): 1 - x, the error rate;
  - lower-is-better figures: the samples as they are, milliseconds converted to seconds.
`extra_info` keeps the figure in its own terms (unit, direction, headline value, median, the transform).

pytest-benchmark is a real dependency of quantgate (pyproject `dependencies`): its Stats and generators are used.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..gate.baselines import atomic_write
from ..stats import Figure

if TYPE_CHECKING:
    from ..measurement import Measurement
    from ..session import Run

FILE_NAME = "benchmark.json"


def transform(fig: Figure) -> tuple[str, list[float]] | None:
    """The figure's samples as lower-is-better times, and a word for the mapping; None when none applies
    (a higher-is-better figure with a non-positive sample has no reciprocal)."""
    samples = [s for s in fig.samples if not math.isnan(s)]
    if not samples:
        return None
    if fig.unit == "fraction":
        return "1 - x (error rate)", [1.0 - s for s in samples]
    if fig.higher_is_better:
        if min(samples) <= 0:
            return None
        return f"1 / x (per {fig.unit}; ops = harmonic mean)", [1.0 / s for s in samples]
    if fig.unit == "ms":
        return "x / 1000 (seconds)", [s / 1000.0 for s in samples]
    return "x", samples


def benchmark_entry(config_id: str, fig: Figure) -> dict[str, Any] | None:
    """One element of `benchmarks`, shaped like pytest_benchmark.stats.Metadata.as_dict(include_data=True)."""
    from pytest_benchmark.stats import Stats

    mapped = transform(fig)
    if mapped is None:
        return None
    how, data = mapped
    stats = Stats()
    for value in data:
        stats.update(value)
    body = stats.as_dict()
    body["data"] = data
    body["iterations"] = 1
    return {
        "group": config_id,
        "name": f"{config_id}/{fig.name}",
        "fullname": f"quantgate::{config_id}::{fig.name}",
        "params": {"config": config_id, "figure": fig.name},
        "param": f"{config_id}-{fig.name}",
        "extra_info": {
            "unit": fig.unit, "higher_is_better": fig.higher_is_better, "value": fig.value,
            "median": fig.median, "source": fig.source, "gated": fig.gated, "transform": how,
        },
        "options": {"disable_gc": False, "timer": "quantgate", "min_rounds": len(data), "max_time": 0,
                    "min_time": 0, "warmup": False},
        "stats": body,
    }


def machine_info(run: Run) -> dict[str, Any]:
    from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info

    info: dict[str, Any] = pytest_benchmark_generate_machine_info()
    hw = run.hardware
    # quantgate's own facts beside pytest-benchmark's: the baseline key and the versions that move speed
    info["quantgate"] = {"hardware": hw.id, "hardware_name": hw.name, "driver": hw.driver,
                         "versions": dict(hw.versions)}
    return info


def commit_info() -> dict[str, Any]:
    """pytest-benchmark's commit info (git in the working directory), filled from CI variables where git
    could not tell (a tarball checkout, a container without .git)."""
    from pytest_benchmark.utils import get_commit_info

    info: dict[str, Any] = get_commit_info()
    sha = os.environ.get("GITHUB_SHA") or os.environ.get("CI_COMMIT_SHA")
    if sha and info.get("id") in ("unversioned", "unknown", None):
        info["id"] = sha
    branch = os.environ.get("GITHUB_REF_NAME") or os.environ.get("CI_COMMIT_REF_NAME")
    if branch and info.get("branch") in ("(unknown)", "(detached head)", None):
        info["branch"] = branch
    return info


def document(run: Run, measured: Iterable[Measurement]) -> dict[str, Any]:
    from pytest_benchmark import __version__

    benchmarks = [entry for m in measured for _, fig in sorted(m.figures.items())
                  if (entry := benchmark_entry(m.config.id, fig)) is not None]
    return {
        "machine_info": machine_info(run),
        "commit_info": commit_info(),
        "benchmarks": benchmarks,
        "datetime": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "version": __version__,
    }


def write(run: Run, measured: list[Measurement], extra_paths: Iterable[Path] = ()) -> list[Path]:
    """results/<run>/benchmark.json, and the same document at each extra path (--qg-benchmark-json, or
    pytest-benchmark's --benchmark-json when that plugin wrote nothing itself)."""
    text = json.dumps(document(run, measured), indent=4, default=str) + "\n"
    paths = [run.results / FILE_NAME, *extra_paths]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)
    return paths
