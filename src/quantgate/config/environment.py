"""Every `QUANTGATE_*` environment variable quantgate reads, in one typed, validated place.

`from_env()` reads them all at once into a frozen `Environment`: one field per variable, named after it
(`QUANTGATE_ATTACH_URL` is `attach_url`), with its doc and default in the field's metadata. A bad value is one
`EnvVarError` line that names the variable, the value and the fix. A blank value counts as unset, everywhere.

Modules take their values from an `Environment` they are given, or call `from_env()` where they run: the
plugin reads it once per session; code that runs in a process of its own (vLLM's general plugin in
quantgate.engine.slowdown, inside the engine) reads its own. Variables quantgate *sets* for a child process
(QUANTGATE_INVOKED_AS for the pytest that `quantgate run` starts) take their names from `variable()`.

A plain frozen dataclass rather than pydantic-settings: the parsing is a few lines per kind, the error must be
one line naming the variable (pydantic's are multi-line tables), the field metadata doubles as the docs table
(docs/settings.md, `python -m quantgate.config.environment`, checked by tests/unit/config/test_environment.py), and
the engine process that reads QUANTGATE_INJECT_SLOWDOWN imports no extra dependency.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..errors import QuantgateError

PREFIX = "QUANTGATE_"

LauncherKind = Literal["local", "container", "attach"]
ContainerRuntime = Literal["podman", "docker"]
ProgressMode = Literal["auto", "rich", "plain", "off"]
PairingMode = Literal["auto", "on", "off"]


class EnvVarError(QuantgateError, ValueError):
    """A QUANTGATE_* variable has a value quantgate cannot use; the message names it, the value and the fix."""


Parser = Callable[[str, str], Any]  # (variable name, non-blank raw value) -> value


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _path(name: str, raw: str) -> Path:
    return Path(raw.strip()).expanduser()


def _choice(*allowed: str) -> Parser:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise EnvVarError(f"{name}={raw!r}: use {', '.join(allowed[:-1])} or {allowed[-1]}")
        return value
    return parse


def _flag(name: str, raw: str) -> bool:
    value = raw.strip()
    if value not in ("0", "1"):
        raise EnvVarError(f"{name}={raw!r}: use 1 (on) or 0 (off)")
    return value == "1"


def _args(name: str, raw: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(raw))
    except ValueError as exc:
        raise EnvVarError(f"{name}: {exc} (quote it as a shell would)") from None


def _fraction(name: str, raw: str) -> float:
    try:
        s = float(raw)
    except ValueError:
        raise EnvVarError(f"{name}={raw!r}: must be a fraction such as 0.05 (5% slower)") from None
    if not 0.0 <= s <= 0.9:
        raise EnvVarError(f"{name}={raw!r}: must be between 0 and 0.9")
    return s


def _var(doc: str, parse: Parser = _text, default: str = "unset", *, secret: bool = False) -> dict[str, Any]:
    """A field's metadata: what the variable does, how it is parsed, its default as the docs show it."""
    return {"doc": doc, "parse": parse, "default": default, "secret": secret}


_HOME_CACHE = Path("~/.cache/quantgate")


@dataclass(frozen=True)
class Environment:
    """quantgate's QUANTGATE_* variables, parsed: field `attach_url` is QUANTGATE_ATTACH_URL, and so on."""

    # --- how engines are obtained (quantgate.engine.launch) ---
    launcher: LauncherKind = field(default="local", metadata=_var(
        "how each config's engine is obtained: a local `vllm serve`, a container, or a server already running",
        _choice("local", "container", "attach"), "local"))
    container_image: str | None = field(default=None, metadata=_var(
        "the vLLM image the container launcher runs (needed with QUANTGATE_LAUNCHER=container)"))
    container_runtime: ContainerRuntime | None = field(default=None, metadata=_var(
        "the container runtime", _choice("podman", "docker"), "podman if on PATH, else docker"))
    container_args: tuple[str, ...] = field(default=(), metadata=_var(
        "extra `run` flags for the engine container, split as a shell would", _args, "none"))
    container_allow_unsafe: bool = field(default=False, metadata=_var(
        "1: allow container flags that open the network or grant privileges (the report warns)", _flag, "0"))
    attach_url: str | None = field(default=None, metadata=_var(
        "the OpenAI-compatible server QUANTGATE_LAUNCHER=attach measures (needed with attach)"))
    attach_log: Path | None = field(default=None, metadata=_var(
        "the attached server's log file, for the kernel record (unset: that test is skipped)", _path))
    attach_model: str | None = field(default=None, metadata=_var(
        "the attached server's model name", default="the one model it serves"))
    attach_api_key: str | None = field(default=None, repr=False, metadata=_var(
        "the attached server's API key", default="VLLM_API_KEY", secret=True))
    # --- the machine ---
    hardware: str | None = field(default=None, metadata=_var(
        "the hardware id, when detection is wrong (e.g. a runner whose driver hides the GPU)",
        default="detected"))
    gpu_name: str | None = field(default=None, metadata=_var(
        "the GPU's name where a GPU id is forced and nvidia-smi sees none"))
    baseline_key: str | None = field(default=None, metadata=_var(
        "the baseline folder under `baselines/`", default="`<id>-<gpu model>` on a GPU, else the id"))
    allow_busy_gpu: bool = field(default=False, metadata=_var(
        "1: start engines on a GPU whose memory another process holds", _flag, "0"))
    gpu_lock_dir: Path | None = field(default=None, metadata=_var(
        "the folder of the host-wide GPU lease locks", _path, "`$TMPDIR/quantgate-gpus-<uid>`"))
    # --- models and builds ---
    model_cache: Path = field(default=_HOME_CACHE / "models", metadata=_var(
        "where built and quantized models are cached", _path, "~/.cache/quantgate/models"))
    quant_python: Path | None = field(default=None, metadata=_var(
        "the quantizer's interpreter", _path, ".venv-quant/bin/python beside the running venv"))
    build_cache: Path = field(default=_HOME_CACHE / "builds", metadata=_var(
        "where pip builds' venvs are cached", _path, "~/.cache/quantgate/builds"))
    torch_index: str = field(default="https://download.pytorch.org/whl/cpu", metadata=_var(
        "the index a pip build takes torch from when pip's own sources have none",
        default="https://download.pytorch.org/whl/cpu"))
    build_pairing: PairingMode = field(default="auto", metadata=_var(
        "whether configs that differ only in their build run side by side, requests interleaved "
        "(quantgate.pairing): auto pairs on a GPU when the memory shares fit, on pairs anyway, off never",
        _choice("auto", "on", "off"), "auto"))
    # --- the run ---
    progress: ProgressMode = field(default="auto", metadata=_var(
        "progress on screen: rich (a live table), plain (lines), off (messages only)",
        _choice("auto", "rich", "plain", "off"), "auto: rich on a terminal, plain in a log"))
    inject_slowdown: float | None = field(default=None, metadata=_var(
        "a fraction (0 to 0.9) every engine step is slowed by: measures the gate's power (set in a "
        "config's env; read inside the engine)", _fraction))
    invoked_as: str | None = field(default=None, metadata=_var(
        "set by `quantgate run` for its pytest: the command messages tell you to rerun"))
    engine_module: str = field(default="quantgate.engine.vllm_entry", metadata=_var(
        "the module run as `python -m MODULE serve`; only quantgate's own tests set it (a scripted engine)",
        default="quantgate.engine.vllm_entry"))

    def __post_init__(self) -> None:
        # the home-relative defaults are resolved against the user's home when read, not at import
        for name in ("model_cache", "build_cache"):
            object.__setattr__(self, name, Path(getattr(self, name)).expanduser())


def variable(field_name: str) -> str:
    """The variable behind an Environment field: variable("invoked_as") == "QUANTGATE_INVOKED_AS"."""
    if field_name not in _FIELDS:
        raise KeyError(f"Environment has no field {field_name!r}")
    return PREFIX + field_name.upper()


def parse(field_name: str, raw: str | None) -> Any:
    """One variable's value from its raw text (None or blank: its default)."""
    f = _FIELDS[field_name]
    if raw is None or not raw.strip():
        return f.default
    return f.metadata["parse"](variable(field_name), raw)


def from_env(environ: Mapping[str, str] | None = None) -> Environment:
    """Every QUANTGATE_* variable of `environ` (default: this process's), parsed and checked."""
    env = os.environ if environ is None else environ
    return Environment(**{name: parse(name, env.get(variable(name))) for name in _FIELDS})


_FIELDS = {f.name: f for f in fields(Environment)}


def markdown_table() -> str:
    """The docs table of every variable (docs/settings.md holds it; a test keeps the two the same)."""
    rows = ["| Variable | Default | What it does |", "|---|---|---|"]
    for f in fields(Environment):
        meta = f.metadata
        rows.append(f"| `{variable(f.name)}` | {meta['default']} | {meta['doc']} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover - regenerates the docs table
    print(markdown_table(), end="")
