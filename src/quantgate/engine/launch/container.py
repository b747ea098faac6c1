"""The container launcher: `podman run` / `docker run` of a vLLM image, with the GPU flags and environment the
seeds use (seed 001: `--device nvidia.com/gpu=all --security-opt=label=disable`, `-e VLLM_USE_FLASHINFER_MOE_FP4=0`,
the model folder mounted read-only at the same path). The container publishes vLLM's port on 127.0.0.1 only,
gets the API key through its environment, and is removed on stop (`--rm`, then `<runtime> rm -f`).

Extra flags (QUANTGATE_CONTAINER_ARGS) that open the network or grant privileges are refused unless
QUANTGATE_CONTAINER_ALLOW_UNSAFE=1, which the report then warns about (quantgate.engine.launch.settings_from).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ...config.environment import Environment, from_env
from ...config.matrix import EngineConfig
from .. import process

CONTAINER_PORT = 8000
GPU_FLAGS = {
    # CDI names every GPU (podman with nvidia-container-toolkit's CDI spec), as seed 001 runs it
    "podman": ["--device", "nvidia.com/gpu=all", "--security-opt=label=disable"],
    "docker": ["--gpus", "all"],
}


# value flags whose argument decides whether they are safe; the rest of the unsafe ones are unsafe as such
_NAMESPACE_FLAGS = ("--network", "--net", "--pid", "--userns", "--uts", "--cgroupns")
_VOLUME_FLAGS = ("-v", "--volume", "--mount")
_PUBLISH_FLAGS = ("-p", "--publish")
_ALWAYS_UNSAFE = {"--privileged": "--privileged (every device and capability)", "--cap-add": "added capabilities",
                  "-P": "every exposed port published", "--publish-all": "every exposed port published",
                  "--device-cgroup-rule": "device cgroup rules"}
# host folders a container must not see: the root, system state, and the container runtimes' own sockets
_SENSITIVE_MOUNTS = ("/", "/etc", "/root", "/proc", "/sys", "/dev", "/boot", "/run", "/var/run", "/var/lib/docker",
                     "/var/lib/containers")


def _flag_value(args: list[str], i: int) -> tuple[str, str | None, int]:
    """(flag, value, next index) for args[i]: `--flag=value`, `--flag value`, or a lone flag."""
    arg = args[i]
    if arg.startswith("--") and "=" in arg:
        flag, value = arg.split("=", 1)
        return flag, value, i + 1
    if arg in _NAMESPACE_FLAGS + _VOLUME_FLAGS + _PUBLISH_FLAGS + ("--cap-add", "--security-opt"):
        return arg, (args[i + 1] if i + 1 < len(args) else None), i + 2
    if len(arg) > 2 and arg[:2] in ("-v", "-p") and not arg.startswith("--"):  # -v/:/host, -p8000:8000
        return arg[:2], arg[2:].lstrip("="), i + 1
    return arg, None, i + 1


def _mount_source(flag: str, value: str) -> str:
    if flag == "--mount":  # type=bind,source=/,target=/host
        fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
        return fields.get("source") or fields.get("src") or ""
    return value.split(":", 1)[0]


def unsafe_container_args(args: tuple[str, ...]) -> list[str]:
    """What each extra container flag would open: the host's network or namespaces, privileges, published
    ports beyond 127.0.0.1, or host system folders. quantgate's own --ipc=host (vLLM's shared memory) and
    --security-opt=label=disable (seed 001's GPU access) are not extra flags and are not judged here."""
    found: list[str] = []
    items, i = list(args), 0
    while i < len(items):
        flag, value, i = _flag_value(items, i)
        if flag in _ALWAYS_UNSAFE and not (flag == "--privileged" and value == "false"):
            found.append(f"{flag}{'=' + value if value else ''}: {_ALWAYS_UNSAFE[flag]}")
        elif flag in _NAMESPACE_FLAGS and value is not None and (value == "host" or value.startswith("container:")):
            found.append(f"{flag} {value}: the host's {flag.lstrip('-')} namespace")
        elif flag in _PUBLISH_FLAGS and value is not None and not value.startswith(("127.0.0.1:", "[::1]:")):
            found.append(f"{flag} {value}: a port published beyond 127.0.0.1")
        elif flag == "--security-opt" and value is not None and "unconfined" in value:
            found.append(f"{flag} {value}: confinement switched off")
        elif flag in _VOLUME_FLAGS and value is not None:
            source = os.path.normpath(_mount_source(flag, value)) if _mount_source(flag, value) else ""
            if source and (source in _SENSITIVE_MOUNTS or source.endswith(".sock") or any(
                    source.startswith(m + "/") for m in _SENSITIVE_MOUNTS if m not in ("/",))):
                found.append(f"{flag} {value}: the host's {source} mounted in the container")
    return found


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    runtime: str = "podman"
    extra_args: tuple[str, ...] = ()
    shm_size: str = "16g"


def default_runtime(env: Environment | None = None) -> str:
    """QUANTGATE_CONTAINER_RUNTIME, else podman where it is on PATH, else docker."""
    return (env or from_env()).container_runtime or ("podman" if shutil.which("podman") else "docker")


def container_name(config: EngineConfig, port: int) -> str:
    return f"quantgate-{config.id}-{port}"


def gpu_flags(runtime: str, gpus: tuple[str, ...] = ()) -> list[str]:
    """Every GPU, or only the leased ones (quantgate.engine.gpus) when engines share a host."""
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
    (quantgate.engine.process.serve_command()[5:]); its --host/--port are replaced by the container's own."""
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


@dataclass(frozen=True)
class ContainerLauncher:
    """Each config's engine in a container of `spec.image` (the run's image, or a config's image build)."""

    spec: ContainerSpec
    kind: Literal["container"] = field(default="container", init=False)
    starts_engines: bool = field(default=True, init=False)

    def start(self, config: EngineConfig, models: process.ResolvedModels | None, log_path: Path, *,
              gpus: tuple[str, ...] = ()) -> process.Engine:
        assert models is not None, "the container launcher starts engines: it needs the models"

        def wrap(serve: list[str], port: int) -> tuple[list[str], tuple[str, ...]]:
            # serve[5:]: what follows `python -m MODULE serve MODEL` (quantgate.engine.process.serve_command)
            return (container_command(self.spec, config, models.model, models.draft, port, serve[5:], gpus),
                    tuple(container_stop_command(self.spec, config, port)))

        return process.start(config, models, log_path, gpus=gpus, wrap=wrap)

    def kernel_log(self, engine: process.Engine) -> tuple[str | None, str]:
        return engine.log_text(), ""
