"""Every workload a config may name (`workloads = [...]` in the matrix), behind one protocol.

The session runs a config's workloads through `WORKLOADS` and asks them which figures they gate, so a new
workload is one class here (and its name in quantgate.config.matrix.WORKLOADS), not edits across the session.
Heavy modules (math-verify for accuracy) are imported when a workload runs, not when quantgate loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..config.matrix import EngineConfig, Matrix
from ..stats import Figure, FigureKey, RecordSource
from .grid import Cell, Client, WarmupWatch, WorkloadResult, figures_from, grid, run_grid


def _quiet(text: str) -> None:
    pass


@dataclass
class WorkloadRun:
    """What a workload runs with: the engine's client, the config and its matrix, the model's vocabulary
    (prompts are token ids), and where its figures of record come from."""

    client: Client
    config: EngineConfig
    matrix: Matrix
    vocab: int
    source: RecordSource  # "server" (/metrics) on a relative gate, else "client"
    progress: Callable[[str], None] = _quiet
    result: WorkloadResult = field(default_factory=WorkloadResult)  # the grid's requests, saved with the figures
    cells: list[Cell] = field(default_factory=list)  # the grid's cells (quantgate.gate.validity checks them)
    # quantgate.gate.validity.MeasureWatch: the grid tells it where warm-up ends; without a grid the
    # measured window starts with the first workload
    watch: WarmupWatch | None = None
    # the grid's result where it was measured already, interleaved with other builds' engines
    # (quantgate.pairing, quantgate.workload.interleave)
    interleaved: WorkloadResult | None = None

    @property
    def gate_speed(self) -> bool:
        """Speed figures are gated only where absolute speed is (GPU lanes); ratios and accuracy everywhere."""
        return self.matrix.gate.mode == "absolute"


class Workload(Protocol):
    name: str

    def settings(self, cfg: EngineConfig, matrix: Matrix) -> Any:
        """This workload's settings for the config (from the matrix)."""

    def gated_figures(self, cfg: EngineConfig, matrix: Matrix) -> list[str]:
        """The figures it gates, known before anything runs (one pytest test each)."""

    def run(self, job: WorkloadRun) -> list[Figure]:
        """Run against the engine; every figure it measured, gated or not."""


class Grid:
    """Context x output length, with warm-up: decode speed (the gated figure), TTFT, prefill, acceptance."""

    name = "grid"

    def settings(self, cfg: EngineConfig, matrix: Matrix) -> Any:
        return matrix.workload

    def gated_figures(self, cfg: EngineConfig, matrix: Matrix) -> list[str]:
        cells = grid(matrix.workload, cfg.max_model_len)
        names: list[str] = []
        if matrix.gate.mode == "relative":
            if cfg.id != matrix.gate.reference:
                names += [str(c.figure_key.with_metric("decode_tps").relative()) for c in cells]
        else:
            names += [c.figure("decode_tps") for c in cells]
        if cfg.speculative is not None and cells:
            names.append("acceptance_length")
        return names

    def run(self, job: WorkloadRun) -> list[Figure]:
        cells = job.cells = grid(job.matrix.workload, job.config.max_model_len)
        if job.interleaved is not None:
            job.result = job.interleaved
        else:
            job.result = run_grid(job.client, job.matrix.workload, cells, job.vocab, progress=job.progress,
                                  watch=job.watch)
        return figures_from(job.result, cells, job.source, job.config.speculative is not None)


class Benchy:
    """Prompt-processing and token-generation speed at set lengths and depths, as llama-benchy measures them."""

    name = "benchy"

    def settings(self, cfg: EngineConfig, matrix: Matrix) -> Any:
        return replace(matrix.benchy, max_model_len=cfg.max_model_len)

    def gated_figures(self, cfg: EngineConfig, matrix: Matrix) -> list[str]:
        if matrix.gate.mode != "absolute":
            return []
        b = self.settings(cfg, matrix)
        return ([str(FigureKey("pp_tps", pp=pp, depth=d)) for pp, d in b.pp_cells()]
                + [str(FigureKey("tg_tps", tg=tg, depth=d)) for tg, d in b.tg_cells()])

    def run(self, job: WorkloadRun) -> list[Figure]:
        from .benchy import run_benchy

        figures = run_benchy(job.client, job.vocab, self.settings(job.config, job.matrix)).figures(job.source)
        return [f if job.gate_speed else replace(f, gated=False) for f in figures]


class Concurrency:
    """The concurrency sweep: output tok/s (gated) and latency at each level."""

    name = "concurrency"

    def settings(self, cfg: EngineConfig, matrix: Matrix) -> Any:
        return matrix.concurrency

    def gated_figures(self, cfg: EngineConfig, matrix: Matrix) -> list[str]:
        if matrix.gate.mode != "absolute":
            return []
        return [str(FigureKey("output_tps", c=c)) for c in matrix.concurrency.levels]

    def run(self, job: WorkloadRun) -> list[Figure]:
        from .concurrency import run_sweep

        return [replace(f, gated=job.gate_speed and f.metric == "output_tps")
                for f in run_sweep(job.client, job.vocab, job.matrix.concurrency).figures()]


class Accuracy:
    """Math accuracy on a seeded problem set (or a JSONL file), gated on every hardware."""

    name = "accuracy"

    def settings(self, cfg: EngineConfig, matrix: Matrix) -> Any:
        return matrix.accuracy

    def gated_figures(self, cfg: EngineConfig, matrix: Matrix) -> list[str]:
        return ["math_accuracy"]

    def run(self, job: WorkloadRun) -> list[Figure]:
        from . import accuracy

        acc = job.matrix.accuracy
        problems = (accuracy.load_jsonl(acc.path) if acc.path
                    else accuracy.generate_problems(seed=acc.seed, n=acc.problems))
        job.progress(f"accuracy: {len(problems)} problems")
        result = accuracy.run_accuracy(job.client, problems, max_tokens=acc.max_tokens,
                                       concurrency=acc.concurrency, progress=job.progress)
        return [accuracy.accuracy_figure(result)]


# run in this order, whatever order the matrix lists them in
WORKLOADS: dict[str, Workload] = {w.name: w for w in (Grid(), Benchy(), Concurrency(), Accuracy())}


def workloads_of(cfg: EngineConfig) -> list[Workload]:
    return [w for name, w in WORKLOADS.items() if name in cfg.workloads]


def run_workloads(job: WorkloadRun) -> list[Figure]:
    """Every workload the config names, in registry order, on one engine."""
    figures: list[Figure] = []
    for w in workloads_of(job.config):
        if w.name != "grid" and job.watch is not None:
            job.watch.measuring()  # the grid starts the measured window after its warm-up; without it, here
        figures += w.run(job)
    return figures
