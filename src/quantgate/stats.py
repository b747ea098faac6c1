"""Figures with their raw samples, and the robust summaries the gate and reports use."""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from .errors import QuantgateError

FigureSource = Literal["server", "client", "derived"]  # /metrics deltas, streamed timing, computed from others
RecordSource = Literal["server", "client"]  # where a gated speed figure of record is measured

_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*)(?:\[([^\[\]]*)\])?")
_VALUE = re.compile(r"[A-Za-z0-9_.+-]+")


class FigureKeyError(QuantgateError, ValueError):
    """A figure name that is not ``metric`` or ``metric[param=value,...]`` with known parameters."""


@dataclass(frozen=True)
class FigureKey:
    """A figure's name as data: the metric plus the parameters of its cell. ``str(key)`` is the one format and
    `FigureKey.parse` the one parser of names such as ``decode_tps[ctx=512,out=long]``; the field order is
    the order on disk, so the names in baselines stay byte-identical."""

    metric: str
    ctx: int | None = None  # grid: context tokens before the measured prompt
    out: str | None = None  # grid: output length name (short, medium, long)
    pp: int | None = None  # llama-benchy prompt-processing tokens
    tg: int | None = None  # llama-benchy generated tokens
    depth: int | None = None  # llama-benchy context depth
    c: int | None = None  # concurrency level

    def __str__(self) -> str:
        params = self.params
        return f"{self.metric}[{params}]" if params else self.metric

    @property
    def params(self) -> str:
        """The part in brackets: ``ctx=512,out=long`` (also the cell's key in raw request records)."""
        return ",".join(f"{f.name}={v}" for f in fields(self)[1:] if (v := getattr(self, f.name)) is not None)

    def with_metric(self, metric: str) -> FigureKey:
        """The same cell under another metric (``decode_tps_client``, ``roofline_fraction``)."""
        return replace(self, metric=metric)

    def named(self, metric: str) -> str:
        """The figure name of this cell under a metric: ``FigureKey("", c=2).named("output_tps")``."""
        return str(self.with_metric(metric))

    def relative(self) -> FigureKey:
        """The ratio to the session's reference config: ``rel_decode_tps[...]``."""
        return self.with_metric("rel_" + self.metric)

    @classmethod
    def parse(cls, name: str) -> FigureKey:
        m = _NAME.fullmatch(name)
        if m is None:
            raise FigureKeyError(f"figure name {name!r} is not metric or metric[param=value,...]")
        known = {f.name: f for f in fields(cls)[1:]}
        values: dict[str, Any] = {}
        for part in m.group(2).split(",") if m.group(2) else ():
            key, eq, value = part.partition("=")
            if key not in known or not eq or not _VALUE.fullmatch(value) or key in values:
                raise FigureKeyError(f"figure name {name!r}: bad parameter {part!r} "
                                     f"(known: {', '.join(known)}, each once, as key=value)")
            if key == "out":
                values[key] = value
            else:
                try:
                    values[key] = int(value)
                except ValueError:
                    raise FigureKeyError(f"figure name {name!r}: {key} must be an integer, got {value!r}") from None
        key = cls(m.group(1), **values)
        if str(key) != name:  # one spelling per figure: a reordered name would not match its baseline
            raise FigureKeyError(f"figure name {name!r} is not in the canonical form {str(key)!r}")
        return key


@dataclass(frozen=True)
class Figure:
    """One named metric of one config, with every raw sample kept."""

    name: str  # str(FigureKey), e.g. "decode_tps[ctx=512,out=long]"
    unit: str
    higher_is_better: bool
    samples: tuple[float, ...]
    source: FigureSource = "server"
    gated: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> FigureKey:
        return FigureKey.parse(self.name)

    @property
    def metric(self) -> str:
        return self.key.metric

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
