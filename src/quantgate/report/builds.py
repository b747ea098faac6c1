"""The seeds' "Delta vs <reference build>" tables: one config on several builds, from one run's measurements."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config.builds import label_of, variant_key
from ..paired import RatioInterval, log_ratio_interval, unpaired_ratio
from ..pairing import PAIRED, RATIO_METRIC, SEQUENTIAL


@dataclass(frozen=True)
class BuildCell:
    """One figure of one config on one build, for the delta table."""
    build: str
    variant: str  # the column group's name: the reference build's config label or id
    cell: str  # "ctx=0 long"
    value: float | None
    samples: tuple[float, ...] = ()  # the figure's raw samples: an unpaired interval against the reference's
    ratios: tuple[float, ...] = ()  # per-slot ratios to the reference build, where measured interleaved


def change(cell: BuildCell, ref: BuildCell | None) -> RatioInterval | None:
    """The build's ratio to the reference build in one cell: paired from its per-slot ratios where it was
    measured interleaved, else unpaired from the two samples; None without samples."""
    if cell.ratios:
        return log_ratio_interval([math.log(r) for r in cell.ratios if r > 0])
    if ref is not None and cell.samples and ref.samples:
        return unpaired_ratio(ref.samples, cell.samples)
    return None


def delta_table(cells: list[BuildCell], reference: str, headline: str, modes: dict[str, str] | str,
                source: str = "the figure of record") -> list[str]:
    """The seeds' "Delta vs <reference build>" tables: a headline table (rows = builds, columns = configs,
    the `headline` cell: ctx=0 long as the seeds, and how each build was compared: `modes`, by build label)
    and one per config with every ctx x output cell, each change with its interval where there are samples."""
    builds = list(dict.fromkeys(c.build for c in cells))
    variants = list(dict.fromkeys(c.variant for c in cells))
    by_key = {(c.build, c.variant, c.cell): c for c in cells}
    value = {k: c.value for k, c in by_key.items()}

    def delta(build: str, variant: str, cell: str) -> str:
        ref, got = value.get((reference, variant, cell)), value.get((build, variant, cell))
        if got is None:
            return "-"
        if build == reference or ref is None or ref <= 0:
            return f"{got:,.2f} tok/s"
        interval = change(by_key[(build, variant, cell)], by_key.get((reference, variant, cell)))
        return interval.text() if interval is not None else f"{got / ref - 1:+.1%}"

    def mode(build: str) -> str:
        if build == reference:
            return "reference"
        return modes if isinstance(modes, str) else modes.get(build, "-")

    ref_head = [value.get((reference, v, headline)) for v in variants]
    shown = ", ".join(f"{v} {x:,.2f} tok/s" for v, x in zip(variants, ref_head, strict=True) if x is not None)
    lines = [f"## Delta vs {reference}" + (f" ({shown})" if shown else ""), "",
             f"Decode tok/s ({source}) of each build relative to the same config on {reference}, {headline}: "
             f"the change with its interval and the interval's confidence. Paired (interleaved): the builds' "
             f"engines ran side by side, their requests alternated cell by cell (AB BA ...); Hodges-Lehmann "
             f"estimate and Wilcoxon signed-rank interval of the per-slot ratios. Sequential, not paired: one "
             f"engine after the other; Hodges-Lehmann shift and Mann-Whitney interval of the two samples.", "",
             "| Build | " + " | ".join(variants) + " | Comparison |", "|---|" + "---:|" * len(variants) + "---|"]
    lines += [f"| {b} | " + " | ".join(delta(b, v, headline) for v in variants) + f" | {mode(b)} |" for b in builds]
    if isinstance(modes, str):
        lines += ["", f"Comparison: {modes}."]
    for variant in variants:
        cols = list(dict.fromkeys(c.cell for c in cells if c.variant == variant))
        lines += ["", f"### {variant}: delta vs {reference} per cell", "",
                  "| Build | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        lines += [f"| {b} | " + " | ".join(delta(b, variant, c) for c in cols) + " |" for b in builds]
    return lines + [""]


def comparison_mode(paired: bool, reason: str | None) -> str:
    if paired:
        return PAIRED
    return f"{SEQUENTIAL} ({reason})" if reason else SEQUENTIAL


def report_lines(run: Any, measured: list[Any]) -> list[str]:
    """The delta tables of every matrix with a reference_build, from this run's measurements."""
    from ..stats import FigureKey

    lines: list[str] = []
    for matrix in run.matrices:
        if matrix.reference_build is None:
            continue
        ids = {c.id for c in matrix.configs}
        ms = [m for m in measured if m.config.id in ids]
        names: dict[str, str] = {}
        for m in ms:  # a column group is named after its config on the reference build
            if label_of(m.config) == matrix.reference_build or variant_key(m.config) not in names:
                names[variant_key(m.config)] = m.config.label or m.config.id
        outputs, cells = list(matrix.workload.outputs), []
        modes: dict[str, str] = {}
        # the server's decode speed where there is one: a client on a busy 2-core box sometimes receives a
        # short stream in one burst (63,618 client "tok/s" where the same build's next engine read 218, in
        # tests/e2e/test_builds_cpu.py; docs/builds.md), which would pass for a build's change
        metric = "decode_tps_server" if any(f.key.metric == "decode_tps_server" for m in ms
                                            for f in m.figures.values()) else "decode_tps"
        for m in ms:
            contexts = sorted({f.key.ctx for f in m.figures.values()
                               if f.key.metric == metric and f.key.ctx is not None})
            paired = any(f.metric == RATIO_METRIC for f in m.figures.values())
            plan = run.pair_plans.get(m.config.id)
            if label_of(m.config) != matrix.reference_build:
                modes[label_of(m.config)] = comparison_mode(paired, plan.reason if plan and not paired else None)
            for ctx in contexts:
                for out in outputs:
                    fig = m.figures.get(str(FigureKey(metric, ctx=ctx, out=out)))
                    ratio = m.figures.get(str(FigureKey(RATIO_METRIC, ctx=ctx, out=out)))
                    cells.append(BuildCell(label_of(m.config), names[variant_key(m.config)], f"ctx={ctx} {out}",
                                           fig.median if fig is not None and fig.samples else None,
                                           fig.samples if fig is not None else (),
                                           ratio.samples if ratio is not None else ()))
        if cells:
            server = metric == "decode_tps_server" or all(
                f.source == "server" for m in ms for f in m.figures.values() if f.key.metric == metric)
            source = "the server's /metrics" if server else "the figure of record"
            lines += delta_table(cells, matrix.reference_build, f"ctx=0 {outputs[-1]}", modes, source)
    return lines
