"""PNG plots for the session report: decode tok/s vs context per config, acceptance per position.

matplotlib with the Agg backend (no display). A measurement is anything with ``.config.id`` and
``.figures: dict[str, Figure]`` (`quantgate.measurement.Measurement`). Each function returns the path it wrote,
or None when no measurement has the figures it plots (nothing is written then).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..stats import Figure, FigureKey, median


class _Config(Protocol):
    id: str


class MeasurementLike(Protocol):
    @property
    def config(self) -> _Config: ...

    @property
    def figures(self) -> dict[str, Figure]: ...


def _save(plt: Any, fig: Any, path: str | Path) -> Path:
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if not math.isnan(v) and not math.isinf(v)]


Point = tuple[int, float, float, float]  # context, median, min, max


def decode_series(measurements: Sequence[MeasurementLike]) -> dict[str, dict[str, list[Point]]]:
    """{output name: {config id: [(context, median, min, max), ...] sorted by context}} from decode_tps[...]."""
    out: dict[str, dict[str, list[Point]]] = {}
    for m in measurements:
        for name, fig in m.figures.items():
            key = FigureKey.parse(name)
            samples = _finite(fig.samples)
            if key.metric != "decode_tps" or key.ctx is None or key.out is None or not samples:
                continue
            ctx, output = key.ctx, key.out
            med = median(samples)
            out.setdefault(output, {}).setdefault(m.config.id, []).append((ctx, med, min(samples), max(samples)))
    for per_config in out.values():
        for points in per_config.values():
            points.sort()
    return out


def _output_order(names: Iterable[str]) -> list[str]:
    rank = {"short": 0, "medium": 1, "long": 2}
    return sorted(names, key=lambda n: (rank.get(n, 9), n))


def plot_decode_vs_context(measurements: Sequence[MeasurementLike], path: str | Path) -> Path | None:
    """One panel per output length (short/medium/long), one line per config: median decode tok/s against
    context length, whiskers from the min to the max sample."""
    series = decode_series(measurements)
    if not series:
        return None
    plt = _pyplot()
    outputs = _output_order(series)
    fig, axes = plt.subplots(1, len(outputs), figsize=(5.2 * len(outputs), 4.2), squeeze=False)
    for ax, output in zip(axes[0], outputs, strict=True):
        for config_id, points in sorted(series[output].items()):
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            err = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=config_id)
        contexts = sorted({p[0] for pts in series[output].values() for p in pts})
        if contexts and contexts[-1] > 0 and len(contexts) > 2 and contexts[-1] / max(contexts[1], 1) >= 8:
            ax.set_xscale("symlog", linthresh=max(contexts[1], 1))
        ax.set_xticks(contexts)
        ax.set_xticklabels([str(c) for c in contexts])
        ax.set_title(f"decode tok/s, output {output}")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("decode tok/s (median, min..max)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def acceptance_series(measurements: Sequence[MeasurementLike]) -> dict[str, tuple[list[float], float, float]]:
    """{config id: (per-position acceptance rates, mean acceptance length, draft acceptance rate)}."""
    out: dict[str, tuple[list[float], float, float]] = {}
    for m in measurements:
        fig = m.figures.get("acceptance_length")
        if fig is None:
            continue
        rates = [float(r) for r in (fig.extra.get("per_position") or [])]
        if not rates:
            continue
        draft_rate = fig.extra.get("draft_acceptance_rate")
        out[m.config.id] = (rates, fig.median, float(draft_rate) if draft_rate is not None else math.nan)
    return out


def plot_acceptance(measurements: Sequence[MeasurementLike], path: str | Path) -> Path | None:
    """Grouped bars: acceptance rate per draft position for every speculative config; the legend gives each
    config's mean acceptance length and draft acceptance rate."""
    series = acceptance_series(measurements)
    if not series:
        return None
    plt = _pyplot()
    positions = max(len(r) for r, _, _ in series.values())
    n = len(series)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * positions + 2), 4.2))
    for i, (config_id, (rates, mean_len, draft_rate)) in enumerate(sorted(series.items())):
        xs = [p + (i - (n - 1) / 2) * width for p in range(len(rates))]
        label = f"{config_id} (AL {mean_len:.2f}"
        label += f", draft acc {draft_rate:.0%})" if not math.isnan(draft_rate) else ")"
        ax.bar(xs, rates, width=width, label=label)
    ax.set_xticks(range(positions))
    ax.set_xticklabels([str(p) for p in range(positions)])
    ax.set_xlabel("draft position")
    ax.set_ylabel("acceptance rate")
    ax.set_ylim(0, 1.05)
    ax.set_title("speculative decoding: acceptance per position")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)
