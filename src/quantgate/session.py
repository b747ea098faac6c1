"""One quantgate run, without pytest: engines started once per config, measured once, figures and verdicts.

The pytest plugin drives this; `quantgate calibrate` and scripts use it directly.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import measurement as measurement_mod
from . import pairing
from .config.matrix import EngineConfig, Matrix
from .engine import builds as builds_mod
from .engine import process as engine_mod
from .engine.figures import ENGINE_FIGURES, engine_figures
from .engine.launch import LauncherSettings
from .engine.pool import EnginePool
from .errors import QuantgateError
from .gate import baselines as baselines_mod
from .gate.baselines import Baseline, BaselineStore, NoiseModel, Verdict, judge
from .gate.validity import MeasureWatch, Validity, assess
from .hardware import Hardware
from .kernels import parse as kernels_mod
from .kernels.record import KernelRecord, diff_records
from .measurement import Measurement
from .models import cache as model_cache
from .models import recipes as models_mod
from .models import shapes as shapes_mod
from .progress import PlainProgress, Progress
from .stats import Figure, RecordSource
from .workload import budget as budget_mod
from .workload.grid import Client
from .workload.registry import WorkloadRun, run_workloads, workloads_of

DEFAULT_START_TIMEOUT_S = 900.0


@dataclass
class Settings:
    results_dir: Path
    baselines_dir: Path
    model_cache: Path | None = None
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    extra_serve_args: tuple[str, ...] = ()  # applied to every config: --qg-serve-arg=--enforce-eager
    extra_serve_args_for: tuple[str, ...] = ()  # config ids the extra args apply to (empty: all)
    python: str | None = None  # interpreter with vLLM; default: ours
    launcher: LauncherSettings = field(default_factory=LauncherSettings)  # local, container or attach
    gpu_leases: bool = True  # on GPUs: each engine takes its GPUs from the host-wide pool (quantgate.engine.gpus)
    budget_override_s: float | None = None  # --qg-budget: every config's budget (0: none); None: the matrix's


def new_run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"


class KernelLogUnavailable(QuantgateError, RuntimeError):
    """No engine log to read kernel selection from (an attached server without QUANTGATE_ATTACH_LOG)."""



def record_source(matrix: Matrix, is_gpu: bool) -> RecordSource:
    """Where a gated decode figure is timed. The server's clock on CPU, whatever the mode: the client shares the
    cores with the engine there, and a starved client reads a whole stream as one burst (a CPU run in absolute
    mode read 73,140 tok/s from the client's clock for a request the server timed at 438). The client's on a
    GPU in absolute mode, as llama-benchy and `vllm bench serve` time it; relative figures are ratios of
    server times on either."""
    return "server" if matrix.gate.mode == "relative" or not is_gpu else "client"

@dataclass
class Run:
    matrices: tuple[Matrix, ...]
    hardware: Hardware
    settings: Settings
    run_id: str = field(default_factory=new_run_id)
    log: Callable[[str], None] = print
    progress: Progress = field(default_factory=PlainProgress)  # each config's stages (quantgate.progress)
    _measured: dict[str, Measurement] = field(default_factory=dict)
    _budget_checked: set[str] = field(default_factory=set)
    pair_plans: dict[str, pairing.Plan] = field(default_factory=dict)  # builds side by side (quantgate.pairing)

    def __post_init__(self) -> None:
        self.results = self.settings.results_dir / self.run_id
        self.store = BaselineStore(self.settings.baselines_dir)
        pairing.pairing_setting()  # a bad QUANTGATE_BUILD_PAIRING is one line before any engine starts
        # the hardware and resolve_models are looked up on each use: a caller may set run.hardware after creating
        # the run, and tests replace Run.resolve_models on the class
        self.engines = EnginePool(lambda: self.hardware, self.settings, self.results, self.config,
                                  lambda cfg: self.resolve_models(cfg), log=self.log, progress=self.progress)

    # --- configs -------------------------------------------------------------------------------
    def matrix_of(self, config_id: str) -> Matrix:
        for matrix in self.matrices:
            if any(c.id == config_id for c in matrix.configs):
                return matrix
        raise KeyError(config_id)

    def config(self, config_id: str) -> EngineConfig:
        cfg = self.matrix_of(config_id).get(config_id)
        s = self.settings
        if s.extra_serve_args and (not s.extra_serve_args_for or config_id in s.extra_serve_args_for):
            cfg = cfg.with_serve_args(s.extra_serve_args)
        return cfg

    def configs(self) -> list[EngineConfig]:
        return [self.config(c.id) for m in self.matrices for c in m.configs]

    def reference_of(self, config_id: str) -> str | None:
        gate = self.matrix_of(config_id).gate
        if gate.mode != "relative" or "grid" not in self.config(config_id).workloads:
            return None  # no grid, no decode ratios: an accuracy-only config never needs the reference's engine
        return gate.reference

    # --- engines -------------------------------------------------------------------------------
    def resolve_models(self, cfg: EngineConfig) -> engine_mod.ResolvedModels:
        def one(ref: str | dict[str, Any], what: str) -> str:
            if isinstance(ref, dict) and shapes_mod.is_shape_spec(ref):  # a real model's shape, dummy weights
                spec = shapes_mod.spec_from_table(ref, where=f"{cfg.source} {what}", quantization=cfg.quantization)
                return str(shapes_mod.ensure_shape(spec, self.settings.model_cache))
            if isinstance(ref, dict):
                recipe = models_mod.recipe_from_spec(ref, where=f"{cfg.source} {what}")
                return str(model_cache.ensure_model(recipe, self.settings.model_cache,
                                                    log=lambda msg: self.progress.stage(cfg.id, f"model: {msg}")))
            path = Path(ref)
            if not path.exists():
                raise models_mod.ModelError(f"{cfg.source}: {what} path {ref!r} does not exist")
            if path.is_dir() and not (path / "config.json").exists():
                raise models_mod.ModelError(f"{cfg.source}: {what} path {ref!r} has no config.json "
                                            f"(not a model folder)")
            return str(path)

        draft = None
        if cfg.speculative is not None and cfg.speculative.model is not None:
            draft = one(cfg.speculative.model, "speculative model")
        return engine_mod.ResolvedModels(model=one(cfg.model, "model"), draft=draft)

    def engine(self, config_id: str) -> engine_mod.Engine:
        """The config's running engine, started on first use and probed against the config's time budget
        once; a failed start or an exceeded budget is remembered and re-raised."""
        eng = self.engines.engine(config_id)
        if config_id not in self._budget_checked:
            self._budget_checked.add(config_id)
            try:
                self._check_budget(config_id, eng)
            except budget_mod.BudgetExceeded as exc:
                self.release(config_id)  # a crawling engine holds the lane's cores: stop it now
                self.engines.fail(config_id, exc)
                raise
        return eng

    def _check_budget(self, config_id: str, eng: engine_mod.Engine) -> None:
        cfg, matrix = self.config(config_id), self.matrix_of(config_id)
        budget = budget_mod.budget_for(cfg, self.hardware.is_gpu, self.settings.budget_override_s)
        if budget is None:
            return
        vocab = _vocab_size(Path(self.resolve_models(cfg).model))
        with self._client(eng, matrix) as client:
            tps = budget_mod.probe_decode_tps(client, vocab)
        need = budget_mod.check_budget(cfg, matrix, tps, budget)
        self.log(f"quantgate: {config_id!r} decodes {tps:.3g} tok/s in the probe: its workloads need "
                 f"at least {need:.0f} s of its {budget:.0f} s budget")

    def _client(self, eng: engine_mod.Engine, matrix: Matrix, budget_s: float | None = None) -> Client:
        w = matrix.workload
        budget = (budget_s, f"config {eng.config.id!r}") if budget_s is not None else None
        return Client(eng.base_url, eng.served_model_name, eng.api_key, w.request_timeout_s, w.request_deadline_s,
                      budget=budget)

    def prestart(self, config_ids: list[str]) -> None:
        """Start these configs' engines all at once (quantgate.engine.pool.EnginePool.prestart)."""
        self.engines.prestart(config_ids)

    def release(self, config_id: str) -> None:
        self.engines.release(config_id)

    def close(self) -> None:
        self.engines.close()

    def measured(self) -> list[Measurement]:
        """The measurements this process took, in the order its engines were first asked for."""
        return [self._measured[c] for c in self.engines.config_ids() if c in self._measured]

    # --- measurement ---------------------------------------------------------------------------
    def kernel_record(self, config_id: str) -> dict[str, Any]:
        eng = self.engine(config_id)
        text, why = self.engines.launcher_of(config_id).kernel_log(eng)
        if text is None:
            raise KernelLogUnavailable(why)
        return kernel_snapshot_dict(text)

    def measurement(self, config_id: str) -> Measurement:
        if config_id in self._measured:
            return self._measured[config_id]
        matrix = self.matrix_of(config_id)
        vocab = _vocab_size(Path(self.resolve_models(self.config(config_id)).model))
        source = record_source(matrix, self.hardware.is_gpu)
        # one config on several builds, side by side where they fit (quantgate.pairing); else one after the other
        if pairing.measure_together(self, config_id, vocab, source) and config_id in self._measured:
            return self._measured[config_id]
        eng = self.engine(config_id)
        cfg = eng.config
        started = time.monotonic()
        # the probe's estimate is a lower bound: the budget also stops the workloads once it is spent
        budget = budget_mod.budget_for(cfg, self.hardware.is_gpu, self.settings.budget_override_s)
        with self._client(eng, matrix, budget) as client:
            watch = MeasureWatch(eng.log_path, eng.alive, client.metrics)  # log, CPU, engine over the window
            job = WorkloadRun(client, cfg, matrix, vocab, source,
                              progress=lambda text: self.progress.stage(config_id, text), watch=watch)
            # quantgate.workload.registry: grid, benchy, concurrency, accuracy
            measured = self.engines.guarded([config_id], lambda: run_workloads(job))
            watch.stop()
        return self.finish_measurement(config_id, eng, job, watch, measured, started)

    def finish_measurement(self, config_id: str, eng: engine_mod.Engine, job: WorkloadRun, watch: MeasureWatch,
                           measured: list[Figure], started: float) -> Measurement:
        """The config's measurement from its workloads' figures: ratios to the gate's reference, the roofline,
        the engine's own figures, the validity checks; kept for the run and saved."""
        cfg = eng.config
        result = job.result
        figures = {f.name: f for f in measured}
        ref = self.reference_of(config_id)
        if ref is not None:
            for f in list(figures.values()):
                if f.metric in ("decode_tps",):
                    figures[f.name] = replace(f, gated=False)  # absolute speed drifts between CPU hosts
            if ref != config_id:
                figures.update({f.name: f for f in self._relative_figures(figures, self.measurement(ref))})
        if self.hardware.is_gpu:  # the decode roofline, ungated (quantgate.report.roofline)
            try:
                from .report import roofline

                for f in roofline.figures_for(self.resolve_models(cfg).model, cfg.quantization,
                                              self.hardware.memory_bandwidth_gbps, figures):
                    figures[f.name] = f
            except Exception as exc:  # a model without a readable config.json: no roofline, say so
                self.log(f"quantgate: no roofline for {config_id!r}: {exc}")
        log_text = eng.log_text()
        for f in engine_figures(log_text, eng.ready_after_s):
            figures[f.name] = f
        m = Measurement(cfg, figures, kernel_snapshot_dict(log_text), result,
                        eng.ready_after_s, eng.log_path, getattr(eng, "start_condition", None),
                        assess(result, job.cells, figures, watch))
        self._measured[config_id] = m
        self._save_raw(m, time.monotonic() - started)
        return m

    def _relative_figures(self, figures: dict[str, Figure], reference: Measurement) -> list[Figure]:
        out = []
        for name, fig in figures.items():
            if fig.metric != "decode_tps":
                continue
            ref = reference.figures.get(name)
            if ref is None or not ref.median or math.isnan(ref.median):
                continue
            out.append(Figure(
                str(fig.key.relative()), "x ref", True, tuple(s / ref.median for s in fig.samples), "derived",
                note=f"ratio to config {reference.config.id!r} in the same session",
            ))
        return out

    def saved_measurements(self) -> list[Measurement]:
        """Measurements other processes of this run saved (pytest-xdist workers share the run folder)."""
        return [m for cfg in self.configs() if (m := measurement_mod.load(cfg, self.results / cfg.id)) is not None]

    def _save_raw(self, m: Measurement, seconds: float) -> None:
        measurement_mod.save(m, self.results / m.config.id, hardware_id=self.hardware.id, run_id=self.run_id,
                             workload_s=seconds)

    # --- verdicts ------------------------------------------------------------------------------
    @property
    def baseline_key(self) -> str:
        """The baseline folder: the exact GPU model (sm90-h200), never just the marker (quantgate.hardware)."""
        return self.hardware.baseline_key

    def noise(self, config_id: str) -> NoiseModel:
        noise = self.store.noise(self.baseline_key, self.matrix_of(config_id).gate.default_tolerance)
        own = {k: v for k, v in ENGINE_FIGURES.items() if k not in noise.tolerances}
        if not own:
            return noise
        return replace(noise, tolerances={**noise.tolerances, **own},
                       sources={**noise.sources, **{k: "engine figure tolerance" for k in own}})

    def baseline_id(self, config_id: str) -> str:
        """Whose baseline a config is judged against: its own, or `baseline_of`'s (a calibration copy or an
        injected-slowdown copy of a config is judged as that config)."""
        return self.config(config_id).baseline_of or config_id

    def baseline(self, config_id: str) -> Baseline | None:
        return self.store.load(self.baseline_key, self.baseline_id(config_id))

    def verdict_notes(self, config_id: str, base: Baseline | None) -> tuple[str, ...]:
        """What every message about this config must say: versions changed since its baseline, and a baseline
        that exists only for another GPU model (never used in place of this GPU's)."""
        notes = []
        changes = baselines_mod.version_changes(base, self.versions_of(config_id))
        if changes:
            notes.append("versions changed since the baseline: " + ", ".join(changes))
        if base is None:
            others = baselines_mod.foreign_baselines(self.store.root, self.hardware.id, self.baseline_key,
                                                     self.baseline_id(config_id))
            if others:
                notes.append(f"baselines exist only for {', '.join(others)}, another GPU model than this "
                             f"{self.hardware.name} ({self.baseline_key}); quantgate never judges one GPU "
                             f"against another's figures: record {self.baseline_key} with --update-baselines")
        start = self.start_condition(config_id)
        base_start = base.environment.get("start_condition") if base is not None else None
        if start and base_start and start != base_start:
            notes.append(f"this engine is a {start} start, the baseline a {base_start} start "
                         f"(docs/gpu.md: the first start on a fresh machine can run slower)")
        return tuple(notes)

    def start_condition(self, config_id: str) -> str | None:
        return self.engines.start_condition(config_id)

    def versions_of(self, config_id: str) -> dict[str, str]:
        """The speed-moving versions a config's engine runs with: the harness's, overlaid by its build's."""
        cfg = self.config(config_id)
        return {**self.hardware.versions, **builds_mod.build_versions(cfg.build, cfg.source)}

    def validity(self, config_id: str) -> Validity:
        """Whether the config's figures are valid (quantgate.gate.validity); a ratio to a reference whose
        figures are invalid is invalid too."""
        own = self.measurement(config_id).validity
        ref = self.reference_of(config_id)
        if ref is None or ref == config_id:
            return own
        return own.combined(self.measurement(ref).validity, f"reference {ref!r}: ")

    def verdict(self, config_id: str, figure_name: str) -> Verdict:
        m = self.measurement(config_id)
        fig = m.figures.get(figure_name)
        if fig is None:
            raise KeyError(f"config {config_id!r} produced no figure {figure_name!r} "
                           f"(have: {', '.join(sorted(m.figures))})")
        base = self.baseline(config_id)
        diff: tuple[str, ...] = ()
        if base is not None and base.kernels is not None:
            diff = tuple(diff_records(KernelRecord.from_dict(base.kernels), KernelRecord.from_dict(m.kernels)))
        verdict = judge(config_id, fig, base, self.noise(config_id), diff)
        notes = self.verdict_notes(config_id, base)
        return replace(verdict, notes=verdict.notes + notes) if notes else verdict

    def environment(self) -> dict[str, Any]:
        hw = self.hardware
        return {
            "hardware_name": hw.name, "compute_capability": hw.compute_capability, "driver": hw.driver,
            "cpu_count": hw.cpu_count, "versions": hw.versions,
        }

    # --- a hardware kind without baselines ----------------------------------------------------------
    def _first_of_kind(self, config_ids: list[str]) -> list[str]:
        """The configs gated here, when this hardware has no baseline at all (else none)."""
        gated = [c for c in config_ids if self.config(c).gated_on(self.hardware.id)]
        return gated if gated and self.baseline_key not in self.store.kinds() else []

    def no_baselines_message(self, config_ids: list[str], update_command: str) -> str | None:
        """One message for a machine whose hardware has no baselines at all: what was found, where baselines
        exist, the command that records them and about how long it takes (quantgate.workload.budget)."""
        gated = self._first_of_kind(config_ids)
        if not gated:
            return None
        hw, kinds = self.hardware, self.store.kinds()
        est = budget_mod.record_estimate([(self.config(c), self.matrix_of(c)) for c in gated], hw.is_gpu,
                                         self.store, kinds, self.settings.budget_override_s)
        return (f"quantgate: no baselines for this hardware: {self.baseline_key} ({hw.name}) has none under "
                f"{self.store.root}; "
                f"baselines exist for: {', '.join(kinds) or 'no hardware yet'}. Record them on this machine with "
                f"`{update_command}` (about {est.seconds / 60:.0f} min for {len(gated)} config(s), {est.basis}), "
                f"then `quantgate calibrate` for its noise model. If {hw.id} is not this machine, set "
                f"QUANTGATE_HARDWARE.")

    def first_baselines_note(self, config_ids: list[str]) -> str | None:
        """What a first --update-baselines on this kind gives, and what it does not (a noise model)."""
        gated = self._first_of_kind(config_ids)
        hw = self.baseline_key  # the folder: sm90-h200 on an H200, cpu-amx on a CPU
        if not gated or self.store.has_noise(self.baseline_key):
            return None
        tolerances = sorted({self.matrix_of(c).gate.default_tolerance for c in gated})
        return (f"quantgate: first baselines for {hw}: this run records {len(gated)} config(s); there is no noise "
                f"model for {hw} yet, so later runs gate at the matrix's default tolerance "
                f"({', '.join(f'{t:.0%}' for t in tolerances)}) until `quantgate calibrate` on this machine "
                f"writes {self.store.root.name}/{hw}/noise.json")

    def update_baseline(self, config_id: str, figure_names: set[str] | None = None) -> Path | None:
        if self.config(config_id).baseline_of:
            return None  # a copy never writes its original's baseline: the original's own engine does
        m = self.measurement(config_id)
        figs = [f for n, f in m.figures.items() if figure_names is None or n in figure_names]
        env = self.environment()
        if m.config.build is not None:  # the baseline names its build and that build's vLLM
            env.update(build=m.config.build.to_dict(), versions=self.versions_of(config_id))
        if m.start_condition:
            env["start_condition"] = m.start_condition
        return self.store.update(self.baseline_key, config_id, figs, m.kernels, env, self.run_id)


def kernel_snapshot_dict(log_text: str) -> dict[str, Any]:
    """The kernel record as snapshotted: the vLLM version is left out, so an upgrade that keeps every
    kernel choice keeps the snapshot green (the version is in the baseline's environment instead)."""
    record = kernels_mod.parse_log(log_text).to_dict()
    record.pop("vllm_version", None)
    return record


def _vocab_size(model_dir: Path) -> int:
    try:
        data = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return 32000
    text_cfg = data.get("text_config", data)
    return int(text_cfg.get("vocab_size") or data.get("vocab_size") or 32000)


def gated_figure_names(cfg: EngineConfig, matrix: Matrix) -> list[str]:
    """The figures a config is gated on, known before anything runs (one pytest test each): each workload's
    (quantgate.workload.registry), then the engine's own where the matrix gates them."""
    names = [name for w in workloads_of(cfg) for name in w.gated_figures(cfg, matrix)]
    if matrix.gate.engine_figures and matrix.gate.mode == "absolute":
        names += list(ENGINE_FIGURES)
    return names
