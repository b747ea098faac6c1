"""How each config's engine comes to be: one `Launcher` protocol, one module per strategy, one `pick()`.

- **local** (local.py, the default): `vllm serve` as a child process on 127.0.0.1.
- **container** (container.py): `podman run` / `docker run` of a vLLM image (QUANTGATE_CONTAINER_IMAGE, or a
  config's image build), published on 127.0.0.1 only.
- **attach** (attach.py): a server someone else started (QUANTGATE_ATTACH_URL), measured, never started or stopped.

The run's launcher comes from the environment (QUANTGATE_LAUNCHER and its companions, read by
quantgate.config.environment); `settings_from` checks what the strategies need, and `pick` chooses the strategy
for one engine. The engine pool (quantgate.engine.pool) only calls the protocol. Modelled on pytest-xdist's
scheduler protocol: a small `Protocol` and one module per strategy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ...config.environment import Environment, EnvVarError, LauncherKind
from ...config.environment import from_env as environment_from_env
from ...config.matrix import EngineConfig
from ...errors import QuantgateError
from ..process import Engine, ResolvedModels
from .attach import AttachLauncher, AttachSpec, attach_kernel_log
from .container import ContainerLauncher, ContainerSpec, default_runtime, unsafe_container_args
from .local import LocalLauncher

__all__ = ["AttachLauncher", "AttachSpec", "ContainerLauncher", "ContainerSpec", "Launcher", "LauncherError",
           "LauncherSettings", "LocalLauncher", "attach_kernel_log", "from_env", "pick", "settings_from"]


class LauncherError(QuantgateError, RuntimeError):
    """The launcher's settings are incomplete or its runtime is missing; the message says which."""


class Launcher(Protocol):
    """One way to get a config's engine."""

    @property
    def kind(self) -> LauncherKind: ...

    @property
    def starts_engines(self) -> bool:
        """False for a server someone else runs: no models to resolve, no GPUs to lease, nothing to prestart."""
        ...

    def start(self, config: EngineConfig, models: ResolvedModels | None, log_path: Path, *,
              gpus: tuple[str, ...] = ()) -> Engine:
        """The config's engine, launched (not yet healthy: quantgate.engine.process.wait_healthy checks it).
        `models` is None only where starts_engines is False."""
        ...

    def kernel_log(self, engine: Engine) -> tuple[str | None, str]:
        """(the engine's log text, "") for the kernel record, or (None, why there is none)."""
        ...


@dataclass(frozen=True)
class LauncherSettings:
    """The run's launcher, as the environment asks for it."""

    kind: LauncherKind = "local"
    container: ContainerSpec | None = None
    attach: AttachSpec | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)  # warnings the report repeats


def settings_from(env: Environment) -> LauncherSettings:
    """The run's launcher settings, checked: what each strategy needs is set, and extra container flags are
    safe (or QUANTGATE_CONTAINER_ALLOW_UNSAFE=1 says to run them anyway, and the report warns)."""
    if env.launcher == "local":
        return LauncherSettings()
    if env.launcher == "container":
        if not env.container_image:
            raise LauncherError("QUANTGATE_LAUNCHER=container needs QUANTGATE_CONTAINER_IMAGE (e.g. "
                                "vllm/vllm-openai:v0.26.0 or localhost/vllm-turbo:dual)")
        extra = env.container_args
        unsafe = unsafe_container_args(extra)
        if unsafe and not env.container_allow_unsafe:
            raise LauncherError(f"QUANTGATE_CONTAINER_ARGS refused: {'; '.join(unsafe)} (an engine under test "
                                f"stays private and unprivileged; set QUANTGATE_CONTAINER_ALLOW_UNSAFE=1 to "
                                f"allow it anyway, and the report will say so)")
        notes = tuple(f"QUANTGATE_CONTAINER_ALLOW_UNSAFE=1: the engine container ran with {u}" for u in unsafe)
        spec = ContainerSpec(env.container_image, default_runtime(env), extra)
        return LauncherSettings("container", container=spec, notes=notes)
    if not env.attach_url:
        raise LauncherError("QUANTGATE_LAUNCHER=attach needs QUANTGATE_ATTACH_URL (e.g. http://127.0.0.1:8011)")
    return LauncherSettings("attach", attach=AttachSpec(env.attach_url.rstrip("/"), env.attach_model,
                                                        env.attach_log))


def from_env(environ: Mapping[str, str] | None = None) -> LauncherSettings:
    """The launcher settings of `environ` (default: this process's environment)."""
    try:
        env = environment_from_env(environ)
    except EnvVarError as exc:  # the plugin turns a LauncherError into one usage-error line
        raise LauncherError(str(exc)) from None
    return settings_from(env)


def pick(settings: LauncherSettings, *, python: str | None = None,
         container: ContainerSpec | None = None) -> Launcher:
    """The strategy for one engine: the run's attached server; else a container of `container` (the run's
    container launcher, or a config's image build: quantgate.engine.pool.EnginePool.launch_target); else a
    local process of `python`."""
    if settings.attach is not None:
        return AttachLauncher(settings.attach)
    if container is not None:
        return ContainerLauncher(container)
    return LocalLauncher(python)
