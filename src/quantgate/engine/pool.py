"""The engines of one run: one per config, started on first use (or all at once: prestart), on GPUs leased
from the host's pool, checked against GPU memory other processes hold, stopped when the config is done.

A failed start is remembered and re-raised for every later test of the config, so a config whose engine never
came up fails each test with the same line instead of starting it again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TypeVar

from .. import hardware as hardware_mod
from ..config.environment import from_env
from ..config.matrix import EngineConfig
from ..hardware import Hardware
from ..progress import PlainProgress, Progress
from ..workload.grid import BudgetExceeded
from . import builds as builds_mod
from . import process as engine_mod
from .gpus import GpuLeaseError, GpuPool, Lease, default_lock_dir, gpu_uuids, gpus_needed, visible_gpus
from .launch import Launcher, LauncherSettings, pick
from .launch.container import ContainerSpec, default_runtime

_T = TypeVar("_T")


class PoolSettings(Protocol):
    """What the pool reads of the session's settings (quantgate.session.Settings)."""

    start_timeout_s: float
    python: str | None  # interpreter with vLLM; default: ours
    launcher: LauncherSettings
    gpu_leases: bool


@dataclass
class Slot:
    engine: engine_mod.Engine | None = None
    error: BaseException | None = None
    lease: Lease | None = None
    launcher: Launcher | None = None  # the strategy that started (or attached) the engine


@dataclass
class EnginePool:
    hardware_of: Callable[[], Hardware]  # the run's hardware, read when it matters (a caller may set it late)
    settings: PoolSettings
    results: Path  # engine logs go to <results>/<config>/engine.log
    config: Callable[[str], EngineConfig]
    resolve_models: Callable[[EngineConfig], engine_mod.ResolvedModels]
    log: Callable[[str], None] = print
    progress: Progress = field(default_factory=PlainProgress)
    _slots: dict[str, Slot] = field(default_factory=dict)
    _gpu_pool: GpuPool | None = None
    _attached: str | None = None  # the one config measured on an attached server

    @property
    def hardware(self) -> Hardware:
        return self.hardware_of()

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

    def slot(self, config_id: str) -> Slot:
        return self._slots.setdefault(config_id, Slot())

    def config_ids(self) -> list[str]:
        """Every config an engine was asked for, in that order."""
        return list(self._slots)

    def running(self, config_id: str) -> engine_mod.Engine | None:
        """The config's engine if it is started (never starts one)."""
        slot = self._slots.get(config_id)
        return slot.engine if slot else None

    def fail(self, config_id: str, exc: BaseException) -> None:
        """Remember a failure: every later engine() of the config raises it at once."""
        self.slot(config_id).error = exc

    def engine(self, config_id: str) -> engine_mod.Engine:
        """The config's running engine, started on first use; a failed start is remembered and re-raised."""
        slot = self.slot(config_id)
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
            if not pick(self.settings.launcher).starts_engines:
                slot.launcher = pick(self.settings.launcher)
                slot.engine = self._attach(cfg, slot.launcher)
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
                slot.launcher = self.launcher(cfg)
                eng = slot.launcher.start(cfg, models, log_path, gpus=gpus)
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

    def launch_target(self, cfg: EngineConfig) -> tuple[str | None, ContainerSpec | None]:
        """(python, container spec) of a config's engine: its build's (quantgate.config.builds), else the
        session's."""
        build, container = cfg.build, self.settings.launcher.container
        if build is None:
            return self.settings.python, container
        if build.kind == "image":  # the container launcher's runtime and flags, or a plain container
            return None, (replace(container, image=build.value) if container
                          else ContainerSpec(build.value, default_runtime()))
        return builds_mod.engine_python(build, cfg.source, self.log), None

    def launcher(self, cfg: EngineConfig) -> Launcher:
        """The strategy that starts a config's engine (quantgate.engine.launch.pick)."""
        python, container = self.launch_target(cfg)
        return pick(self.settings.launcher, python=python, container=container)

    def launcher_of(self, config_id: str) -> Launcher:
        """The strategy that started the config's engine (its kernel log comes through it)."""
        launcher = self.slot(config_id).launcher
        return launcher if launcher is not None else pick(self.settings.launcher)

    def _attach(self, cfg: EngineConfig, launcher: Launcher) -> engine_mod.Engine:
        if self._attached not in (None, cfg.id):
            # one URL is one server: measuring it under a second config's name would file wrong figures
            raise engine_mod.EngineStartError(
                f"config {cfg.id!r}: QUANTGATE_LAUNCHER=attach measures one server, already used as config "
                f"{self._attached!r}; select one config (pytest -k ID)")
        self._attached = cfg.id
        eng = launcher.start(cfg, None, self.results / cfg.id / "engine.log")
        engine_mod.wait_healthy(eng, self.settings.start_timeout_s)
        self.log(f"quantgate: attached config {cfg.id!r} to {eng.base_url} (model {eng.served_model_name!r})")
        return eng

    def _give_back(self, slot: Slot) -> None:
        if slot.lease is not None:
            slot.lease.release()
            slot.lease = None

    def _check_gpu_free(self, config_id: str, gpus: tuple[str, ...] = ()) -> None:
        """Refuse to start on a GPU whose memory another process holds (with leases: only the leased GPUs,
        since other workers' engines legitimately hold the rest)."""
        if not self.hardware.is_gpu or from_env().allow_busy_gpu:
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
        if not pick(self.settings.launcher).starts_engines:
            return  # nothing to start
        pending: list[tuple[str, engine_mod.Engine]] = []
        condition = machine_start_condition(self.hardware)  # engines started together share it
        for config_id in config_ids:
            slot = self._slots.setdefault(config_id, Slot())
            if slot.engine is not None or slot.error is not None:
                continue
            cfg = self.config(config_id)
            try:
                models = self.resolve_models(cfg)
                self.log(f"quantgate: starting engine {config_id!r} ({cfg.quantization}, {cfg.spec_label}) "
                         f"[prestart]")
                # no GPU leases here: prestarted engines share the GPU(s) on purpose
                slot.launcher = self.launcher(cfg)
                slot.engine = slot.launcher.start(cfg, models, self.results / config_id / "engine.log")
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

    def guarded(self, config_ids: list[str], work: Callable[[], _T]) -> _T:
        """Run these configs' workloads: a spent budget stops their engines, and every remaining test of them
        fails at once with its line; an engine that died during measurement is said so, with its log."""
        try:
            return work()
        except BudgetExceeded as exc:
            for config_id in config_ids:
                self.release(config_id)
                self.fail(config_id, exc)
            raise
        except Exception as exc:
            deadline = time.monotonic() + 3.0  # a dying server drops the connection just before it exits
            engines = [(c, e) for c in config_ids if (e := self.running(c)) is not None]
            while all(e.alive() for _, e in engines) and time.monotonic() < deadline:
                time.sleep(0.1)
            for config_id, eng in engines:
                if not eng.alive():
                    died = engine_mod.EngineError(
                        f"engine for config {config_id!r} died during measurement ({exc}); "
                        f"log {eng.log_path}, last lines:\n{eng.log_tail()}")
                    self.fail(config_id, died)
                    raise died from exc
            raise

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

    def start_condition(self, config_id: str) -> str | None:
        eng = self.running(config_id)
        return getattr(eng, "start_condition", None) if eng is not None else None


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
