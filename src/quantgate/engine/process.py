"""One real `vllm serve` per config: start on 127.0.0.1, wait for /health, keep its log, stop its process group."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..config.environment import from_env
from ..config.matrix import EngineConfig
from ..errors import QuantgateError
from .builds import entry_path

HOST = "127.0.0.1"  # never 0.0.0.0: an engine under test is nobody's public endpoint
_PR_SET_PDEATHSIG = 1

# (local serve command, port) -> (command to run instead, command that stops it): how the container launcher
# (quantgate.engine.launch.container) runs the same `vllm serve` inside a container
CommandWrap = Callable[[list[str], int], tuple[list[str], tuple[str, ...]]]


class EngineError(QuantgateError, RuntimeError):
    """The engine could not be started or died; the message carries the tail of its log."""


class EngineStartError(EngineError):
    pass


@dataclass(frozen=True)
class ResolvedModels:
    model: str
    draft: str | None = None


@dataclass
class Engine:
    config: EngineConfig
    port: int
    api_key: str
    log_path: Path | None
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_after_s: float | None = None
    gpus: tuple[str, ...] = ()  # leased GPUs (CUDA_VISIBLE_DEVICES), empty on CPU
    stop_command: tuple[str, ...] = ()  # run after SIGTERM: removes a container
    attached_url: str | None = None  # a server someone else started: never stopped by us
    model_name: str | None = None
    start_condition: str | None = None  # pool.machine_start_condition: "first" or "warm" on GPUs
    _log_handle: object | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return self.attached_url or f"http://{HOST}:{self.port}"

    @property
    def served_model_name(self) -> str:
        return self.model_name or self.config.id

    def alive(self) -> bool:
        if self.attached_url is not None:
            return True  # not ours to watch: a dead server shows as failed requests
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 25) -> str:
        text = self.log_text().rstrip().splitlines()
        tail = ["    " + line for line in text[-lines:]]
        cause = root_cause(text[:-lines])
        if cause:  # vLLM's last lines say only "See root cause above" (a worker's error, 120 lines up)
            tail.insert(0, f"    first error above these lines: {cause}")
        return "\n".join(tail)


# an exception line of a traceback, bare or in one of vLLM's ERROR log lines (never a WARNING that quotes one)
_ERROR_LINE = re.compile(r"^(?:\(\w+ pid=\d+\) )?(?:ERROR \S+ \S+ \[[^\]]*\] )?"
                         r"([A-Za-z_][\w.]*(?:Error|Exception|Exit): .*)$")


def root_cause(lines: list[str]) -> str | None:
    """The first exception a log reports: a failed start's cause, before the tracebacks it set off."""
    for line in lines:
        found = _ERROR_LINE.match(line)
        if found:
            return found.group(1)[:300]
    return None


# Every engine we start until it is stopped, so atexit and signal handlers can reap them.
_LIVE: dict[int, Engine] = {}
_LIVE_LOCK = threading.Lock()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: if the harness dies (even SIGKILL), the kernel sends the API server
    SIGTERM, and vLLM stops its own engine-core processes."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def serve_command(config: EngineConfig, models: ResolvedModels, port: int, python: str | None = None) -> list[str]:
    # QUANTGATE_ENGINE_MODULE exists for quantgate's own plugin tests (a scripted stand-in); never set it
    # for a real gate
    module = from_env().engine_module
    cmd = [
        python or sys.executable, "-m", module, "serve", models.model,
        "--host", HOST, "--port", str(port),
        "--served-model-name", config.id,
        "--seed", "42",
        "--max-model-len", str(config.max_model_len),
    ]
    if config.speculative is not None:
        cmd += ["--speculative-config", config.speculative.to_serve_json(models.draft)]
    if _is_shape(config.model) and "--load-format" not in config.serve_args:
        cmd += ["--load-format", "dummy"]  # a shape model has a config and a tokenizer, no weights
    return cmd + list(config.serve_args)


def _is_shape(model: object) -> bool:
    from ..models.shapes import is_shape_spec

    return is_shape_spec(model)


def engine_env(config: EngineConfig, api_key: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "VLLM_API_KEY": api_key,  # in the environment, not argv: argv shows in ps and in our saved log
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "VLLM_LOGGING_COLOR": "0",
    })
    env.update(config.env)
    env["VLLM_API_KEY"] = api_key  # the matrix loader refuses to pin it; this keeps it so for any caller
    return env


def start(
    config: EngineConfig, models: ResolvedModels, log_path: Path, *,
    port: int | None = None, python: str | None = None, gpus: tuple[str, ...] = (),
    wrap: CommandWrap | None = None,
) -> Engine:
    """Launch `vllm serve` for a config: a local process, or what `wrap` makes of its command (a container).
    `gpus` limits it to leased GPUs (quantgate.engine.gpus)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    api_key = secrets.token_hex(16)
    cmd = serve_command(config, models, port, python)
    env = engine_env(config, api_key)
    stop_cmd: tuple[str, ...] = ()
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    entry = None if wrap is not None else entry_path(python)  # a build's venv has no quantgate
    if entry:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (entry, env.get("PYTHONPATH")) if p)
    if wrap is not None:
        cmd, stop_cmd = wrap(cmd, port)
    handle = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
    shown_env = " ".join(f"{k}={v}" for k, v in sorted(config.env.items()))
    shown_gpus = f"CUDA_VISIBLE_DEVICES={','.join(gpus)} " if gpus else ""
    handle.write(f"# quantgate: {shown_gpus}{shown_env} {' '.join(cmd)}\n".encode())
    handle.flush()
    process = subprocess.Popen(
        cmd, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        preexec_fn=_die_with_parent, close_fds=True,
    )
    engine = Engine(config=config, port=port, api_key=api_key, log_path=log_path, process=process,
                    started_at=time.monotonic(), gpus=gpus, stop_command=stop_cmd, _log_handle=handle)
    with _LIVE_LOCK:
        _LIVE[process.pid] = engine
    return engine


def wait_healthy(engine: Engine, timeout_s: float, poll_s: float = 0.5,
                 on_poll: Callable[[], None] | None = None) -> float:
    """Poll /health until 200; fail early if the process dies. Returns seconds from launch to healthy.
    `on_poll` runs between polls (progress on screen: the seconds the start has taken so far)."""
    deadline = engine.started_at + timeout_s
    with httpx.Client(timeout=5.0) as client:
        if engine.attached_url is not None:
            return _check_attached(engine, client)
        while True:
            if not engine.alive():
                code = engine.process.returncode if engine.process else None
                raise EngineStartError(
                    f"engine for config {engine.config.id!r} exited with code {code} before becoming healthy; "
                    f"log {engine.log_path}, last lines:\n{engine.log_tail()}"
                )
            try:
                if client.get(f"{engine.base_url}/health").status_code == 200:
                    engine.ready_after_s = time.monotonic() - engine.started_at
                    return engine.ready_after_s
            except httpx.HTTPError:
                pass
            fatal = _fatal_line(engine)
            if fatal:
                stop(engine)
                raise EngineStartError(
                    f"engine for config {engine.config.id!r} failed to start ({fatal}) while its API server "
                    f"kept waiting (killed); log {engine.log_path}, last lines:\n{engine.log_tail()}"
                )
            if time.monotonic() > deadline:
                stop(engine)
                raise EngineStartError(
                    f"engine for config {engine.config.id!r} not healthy after {timeout_s:.0f} s "
                    f"(killed); log {engine.log_path}, last lines:\n{engine.log_tail()}"
                )
            if on_poll is not None:
                on_poll()
            time.sleep(poll_s)


# vLLM's engine core can die during start while the API server waits on it until killed (seen with vLLM
# 0.26.0, tensor parallel: "EngineCore failed to start." and the API server polling zmq for minutes)
_FATAL_START = ("EngineCore failed to start", "Engine core initialization failed")


def _fatal_line(engine: Engine) -> str | None:
    if engine.log_path is None:
        return None
    try:
        with open(engine.log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 65536))
            tail = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    return next((marker for marker in _FATAL_START if marker in tail), None)


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def group_alive(pgid: int) -> bool:
    return _signal_group(pgid, 0)


def stop(engine: Engine, grace_s: float = 20.0) -> None:
    """SIGTERM the API server (it stops its engine core), then SIGKILL whatever is left of the group.
    A container is removed as well (the runtime's client forwards SIGTERM, but a hung one may not)."""
    proc = engine.process
    if proc is None:
        return
    pgid = proc.pid  # the child called setsid(), so its pid is its group id
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    if engine.stop_command:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(list(engine.stop_command), capture_output=True, timeout=60, check=False)
    if group_alive(pgid):
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(pgid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)
    handle = engine._log_handle
    if handle is not None:
        with contextlib.suppress(OSError):
            handle.close()  # type: ignore[attr-defined]
    with _LIVE_LOCK:
        _LIVE.pop(proc.pid, None)


def _check_attached(engine: Engine, client: httpx.Client) -> float:
    """One /health and /v1/models check of an attached server; settles which model name to ask for."""
    url = engine.base_url
    headers = {"Authorization": f"Bearer {engine.api_key}"} if engine.api_key else {}
    try:
        health = client.get(f"{url}/health")
        models = client.get(f"{url}/v1/models", headers=headers)
    except httpx.HTTPError as exc:
        raise EngineStartError(f"config {engine.config.id!r}: attached server {url} did not answer: {exc}") from None
    if health.status_code != 200 or models.status_code != 200:
        raise EngineStartError(
            f"config {engine.config.id!r}: attached server {url} answered /health {health.status_code}, "
            f"/v1/models {models.status_code}" + (" (set QUANTGATE_ATTACH_API_KEY)" if models.status_code == 401
                                                   else ""))
    try:
        names = [m.get("id") for m in models.json().get("data", [])]
    except (ValueError, AttributeError, TypeError):
        raise EngineStartError(f"config {engine.config.id!r}: attached server {url} is not a vLLM server: "
                               f"/v1/models is not an OpenAI model list") from None
    if engine.model_name is None:
        if len(names) != 1:
            raise EngineStartError(f"config {engine.config.id!r}: attached server {url} serves {names}; "
                                   f"name one with QUANTGATE_ATTACH_MODEL")
        engine.model_name = names[0]
    elif engine.model_name not in names:
        raise EngineStartError(f"config {engine.config.id!r}: QUANTGATE_ATTACH_MODEL={engine.model_name!r} is "
                               f"not served by {url} (it serves {names})")
    # an OpenAI-compatible server that is not vLLM (or a vLLM behind a proxy that drops series) answers both
    # checks above: without vLLM's /metrics no figure can be measured, so refuse it now, in one line
    from ..workload.grid import WorkloadError, checked_snapshot

    try:
        checked_snapshot(client.get(f"{url}/metrics", headers=headers), engine.model_name)
    except (WorkloadError, httpx.HTTPError) as exc:
        raise EngineStartError(f"config {engine.config.id!r}: attached server {url} refused: {exc}") from None
    return 0.0


def stop_all() -> None:
    with _LIVE_LOCK:
        engines = list(_LIVE.values())
    for engine in engines:
        stop(engine, grace_s=10.0)


atexit.register(stop_all)


def live_engines() -> list[Engine]:
    with _LIVE_LOCK:
        return list(_LIVE.values())


@contextlib.contextmanager
def running(
    config: EngineConfig, models: ResolvedModels, log_path: Path, *, timeout_s: float = 600.0,
    python: str | None = None,
) -> Iterator[Engine]:
    """Start, wait for health, yield, and always stop: for scripts that use quantgate without pytest."""
    engine = start(config, models, log_path, python=python)
    try:
        wait_healthy(engine, timeout_s)
        yield engine
    finally:
        stop(engine)
