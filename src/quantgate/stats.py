"""Figures with their raw samples, and the robust summaries the gate and reports use."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One named metric of one config, with every raw sample kept."""

    name: str  # e.g. "decode_tps[ctx=512,out=long]"
    unit: str
    higher_is_better: bool
    samples: tuple[float, ...]
    source: str = "server"  # "server" (/metrics deltas), "client" (streamed timing), "derived"
    gated: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return self.name.split("[", 1)[0]

    @property
    def value(self) -> float:
        """The figure's headline: the mean for fractions (per-item 0/1 scores), else the median."""
        if self.unit == "fraction":
            return sum(self.samples) / len(self.samples) if self.samples else math.nan
        return self.median

    @property
    def median(self) -> float:
        return median(self.samples)

    @property
    def mad(self) -> float:
        return mad(self.samples)

    @property
    def cv(self) -> float:
        return cv(self.samples)

    def summary(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "source": self.source,
            "gated": self.gated,
            "n": len(self.samples),
            "median": round_sig(self.median),
            "mean": round_sig(sum(self.samples) / len(self.samples)) if self.samples else math.nan,
            "mad": round_sig(self.mad),
            "cv": round_sig(self.cv),
            "min": round_sig(min(self.samples)) if self.samples else math.nan,
            "max": round_sig(max(self.samples)) if self.samples else math.nan,
            "samples": [round_sig(s) for s in self.samples],
            **({"note": self.note} if self.note else {}),
        }


def median(values: tuple[float, ...] | list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def mad(values: tuple[float, ...] | list[float]) -> float:
    """Median absolute deviation, unscaled: robust to the odd stalled request on a shared 2-core VM."""
    if not values:
        return math.nan
    m = median(values)
    return median([abs(v - m) for v in values])


def cv(values: tuple[float, ...] | list[float]) -> float:
    """Robust coefficient of variation: 1.4826 * MAD / median (equals stdev/mean for normal data)."""
    m = median(values)
    if not values or m == 0 or math.isnan(m):
        return math.nan
    return 1.4826 * mad(values) / abs(m)


def round_sig(value: float, digits: int = 6) -> float:
    """Stable float formatting for diff-friendly JSON."""
    if value == 0 or math.isnan(value) or math.isinf(value):
        return value
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


def relative_delta(measured: float, baseline: float) -> float:
    return (measured - baseline) / baseline if baseline else math.nan


def worse_by(measured: float, baseline: float, higher_is_better: bool) -> float:
    """How much worse measured is than baseline, as a fraction (negative when better)."""
    delta = relative_delta(measured, baseline)
    return -delta if higher_is_better else delta
