"""Ways to get an engine besides a local `vllm serve` process: a container, or a server already running.

- **container**: `podman run` / `docker run` of a vLLM image with the GPU flags and environment the seeds use
  (seed 001: `--device nvidia.com/gpu=all --security-opt=label=disable`, `-e VLLM_USE_FLASHINFER_MOE_FP4=0`,
  the model folder mounted read-only at the same path). The container publishes vLLM's port on 127.0.0.1
  only, gets the API key through its environment, and is removed on stop (`--rm`, then `<runtime> rm -f`).
- **attach**: an OpenAI-compatible server someone else started (`QUANTGATE_ATTACH_URL`). quantgate does not
  start or stop it; the kernel record comes from a log file the user names (`QUANTGATE_ATTACH_LOG`), or the
  kernel-selection test is skipped with a reason that says so.

Selected per run with QUANTGATE_LAUNCHER=local|container|attach (default local), QUANTGATE_CONTAINER_IMAGE,
QUANTGATE_CONTAINER_RUNTIME (podman, else docker), QUANTGATE_CONTAINER_ARGS (extra run flags).
This module only builds commands and settings; quantgate.engine runs them and quantgate.session picks one.
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import QuantgateError
from .matrix import EngineConfig

CONTAINER_PORT = 8000
GPU_FLAGS = {
    # CDI names every GPU (podman with nvidia-container-toolkit's CDI spec), as seed 001 runs it
    "podman": ["--device", "nvidia.com/gpu=all", "--security-opt=label=disable"],
    "docker": ["--gpus", "all"],
}


class LauncherError(QuantgateError, RuntimeError):
    """The launcher's settings are incomplete or its runtime is missing; the message says which."""


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    runtime: str = "podman"
    extra_args: tuple[str, ...] = ()
    shm_size: str = "16g"


@dataclass(frozen=True)
class AttachSpec:
    base_url: str
    model_name: str | None = None  # served model name; default: the config id
    log_file: Path | None = None  # the server's log, for the kernel record


@dataclass(frozen=True)
class LauncherSettings:
    kind: str = "local"  # local | container | attach
    container: ContainerSpec | None = None
    attach: AttachSpec | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def from_env(env: dict[str, str] | None = None) -> LauncherSettings:
    env = dict(os.environ if env is None else env)
    kind = env.get("QUANTGATE_LAUNCHER", "local").strip() or "local"
    if kind == "local":
        return LauncherSettings()
    if kind == "container":
        image = env.get("QUANTGATE_CONTAINER_IMAGE")
        if not image:
            raise LauncherError("QUANTGATE_LAUNCHER=container needs QUANTGATE_CONTAINER_IMAGE (e.g. "
                                "vllm/vllm-openai:v0.26.0 or localhost/vllm-turbo:dual)")
        runtime = env.get("QUANTGATE_CONTAINER_RUNTIME") or ("podman" if shutil.which("podman") else "docker")
        if runtime not in GPU_FLAGS:
            raise LauncherError(f"QUANTGATE_CONTAINER_RUNTIME={runtime!r}: use podman or docker")
        extra = tuple(shlex.split(env.get("QUANTGATE_CONTAINER_ARGS", "")))
        return LauncherSettings("container", container=ContainerSpec(image, runtime, extra))
    if kind == "attach":
        url = env.get("QUANTGATE_ATTACH_URL")
        if not url:
            raise LauncherError("QUANTGATE_LAUNCHER=attach needs QUANTGATE_ATTACH_URL (e.g. http://127.0.0.1:8011)")
        log = env.get("QUANTGATE_ATTACH_LOG")
        return LauncherSettings("attach", attach=AttachSpec(url.rstrip("/"), env.get("QUANTGATE_ATTACH_MODEL"),
                                                            Path(log) if log else None))
    raise LauncherError(f"QUANTGATE_LAUNCHER={kind!r}: use local, container or attach")


def container_name(config: EngineConfig, port: int) -> str:
    return f"quantgate-{config.id}-{port}"


def gpu_flags(runtime: str, gpus: tuple[str, ...] = ()) -> list[str]:
    """Every GPU, or only the leased ones (quantgate.gpus) when engines share a host."""
    if not gpus:
        return list(GPU_FLAGS[runtime])
    if runtime == "docker":
        return ["--gpus", f'"device={",".join(gpus)}"']
    flags: list[str] = []
    for gpu in gpus:
        flags += ["--device", f"nvidia.com/gpu={gpu}"]
    return [*flags, "--security-opt=label=disable"]


def container_command(
    spec: ContainerSpec, config: EngineConfig, model: str, draft: str | None, port: int, serve_argv: list[str],
    gpus: tuple[str, ...] = (),
) -> list[str]:
    """`podman run ...` for one config. `serve_argv` is what follows `vllm serve MODEL` for a local engine
    (quantgate.engine.serve_command()[5:]); its --host/--port are replaced by the container's own."""
    args = list(serve_argv)
    for flag, value in (("--host", "0.0.0.0"), ("--port", str(CONTAINER_PORT))):
        if flag in args:
            args[args.index(flag) + 1] = value
    mounts: list[str] = []
    for path in dict.fromkeys(p for p in (model, draft) if p):
        folder = str(Path(path).resolve())
        mounts += ["-v", f"{folder}:{folder}:ro"]
    env: list[str] = ["-e", "VLLM_API_KEY"]  # value from our environment: never on the command line
    for key, value in sorted(config.env.items()):
        env += ["-e", f"{key}={value}"]
    return [
        spec.runtime, "run", "--rm", "--name", container_name(config, port),
        *gpu_flags(spec.runtime, gpus), "--shm-size", spec.shm_size, "--ipc=host",
        "-p", f"127.0.0.1:{port}:{CONTAINER_PORT}",  # the engine stays private to this host
        *mounts, *env, *spec.extra_args,
        spec.image, "vllm", "serve", str(Path(model).resolve()), *args,
    ]


def container_stop_command(spec: ContainerSpec, config: EngineConfig, port: int) -> list[str]:
    return [spec.runtime, "rm", "-f", container_name(config, port)]


def attach_kernel_log(spec: AttachSpec) -> tuple[str | None, str]:
    """(log text or None, reason when None) for the kernel-selection test of an attached server."""
    if spec.log_file is None:
        return None, ("attached to a running server without a log: set QUANTGATE_ATTACH_LOG to its log file "
                      "to check kernel selection")
    try:
        return spec.log_file.read_text(encoding="utf-8", errors="replace"), ""
    except OSError as exc:
        return None, f"QUANTGATE_ATTACH_LOG={spec.log_file}: {exc.strerror or exc}"
