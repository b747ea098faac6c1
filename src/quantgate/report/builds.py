"""The seeds' "Delta vs <reference build>" tables: one config on several builds, from one run's measurements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.builds import label_of, variant_key


@dataclass(frozen=True)
class BuildCell:
    """One figure of one config on one build, for the delta table."""
    build: str
    variant: str  # the column group's name: the reference build's config label or id
    cell: str  # "ctx=0 long"
    value: float | None


def delta_table(cells: list[BuildCell], reference: str, headline: str, mode: str,
                source: str = "the figure of record") -> list[str]:
    """The seeds' "Delta vs <reference build>" tables: a headline table (rows = builds, columns = configs,
    the `headline` cell: ctx=0 long as the seeds) and one per config with every ctx x output cell."""
    builds = list(dict.fromkeys(c.build for c in cells))
    variants = list(dict.fromkeys(c.variant for c in cells))
    value = {(c.build, c.variant, c.cell): c.value for c in cells}

    def delta(build: str, variant: str, cell: str) -> str:
        ref, got = value.get((reference, variant, cell)), value.get((build, variant, cell))
        if got is None:
            return "-"
        if build == reference or ref is None or ref <= 0:
            return f"{got:,.2f} tok/s"
        return f"{got / ref - 1:+.1%}"

    ref_head = [value.get((reference, v, headline)) for v in variants]
    shown = ", ".join(f"{v} {x:,.2f} tok/s" for v, x in zip(variants, ref_head, strict=True) if x is not None)
    lines = [f"## Delta vs {reference}" + (f" ({shown})" if shown else ""), "",
             f"Decode tok/s ({source}) of each build relative to the same config on {reference}, {headline}. "
             f"Comparison: {mode}.", "",
             "| Build | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]
    lines += [f"| {b} | " + " | ".join(delta(b, v, headline) for v in variants) + " |" for b in builds]
    for variant in variants:
        cols = list(dict.fromkeys(c.cell for c in cells if c.variant == variant))
        lines += ["", f"### {variant}: delta vs {reference} per cell", "",
                  "| Build | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        lines += [f"| {b} | " + " | ".join(delta(b, variant, c) for c in cols) + " |" for b in builds]
    return lines + [""]


SEQUENTIAL = ("sequential, not paired: each build's engine ran alone, one after the other, as quantgate runs "
              "every config (interleaving two builds' requests cell by cell is not implemented; on a CPU the two "
              "engines would share the same cores)")


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
        # the server's decode speed where there is one: a client on a busy 2-core box sometimes receives a
        # short stream in one burst (63,618 client "tok/s" where the same build's next engine read 218, in
        # tests/e2e/test_builds_cpu.py; docs/builds.md), which would pass for a build's change
        metric = "decode_tps_server" if any(f.key.metric == "decode_tps_server" for m in ms
                                            for f in m.figures.values()) else "decode_tps"
        for m in ms:
            contexts = sorted({f.key.ctx for f in m.figures.values()
                               if f.key.metric == metric and f.key.ctx is not None})
            for ctx in contexts:
                for out in outputs:
                    fig = m.figures.get(str(FigureKey(metric, ctx=ctx, out=out)))
                    cells.append(BuildCell(label_of(m.config), names[variant_key(m.config)], f"ctx={ctx} {out}",
                                           fig.median if fig is not None and fig.samples else None))
        if cells:
            server = metric == "decode_tps_server" or all(
                f.source == "server" for m in ms for f in m.figures.values() if f.key.metric == metric)
            source = "the server's /metrics" if server else "the figure of record"
            lines += delta_table(cells, matrix.reference_build, f"ctx=0 {outputs[-1]}", SEQUENTIAL, source)
    return lines
