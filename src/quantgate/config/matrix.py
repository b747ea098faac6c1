"""The config matrix: engine configurations declared as data (TOML) and validated with errors that name the spot."""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar, get_args

from .builds import Build, BuildError, parse_build, reference_build_error
from .records import (
    AccuracySettings,
    EngineConfig,
    ExpectedFailure,
    ExpectedSlow,
    FailureStage,
    GateMode,
    GateSettings,
    Matrix,
    MatrixError,
    Speculative,
    WorkloadSettings,
)
from .settings import BenchySettings, SweepSettings
from .variables import check_variables
from .variables import expand as _expand

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

QUANTIZATIONS = (
    "bf16", "fp16", "w4a16", "w4a8", "w8a8", "fp8", "fp8-dynamic", "nvfp4", "mxfp4", "gptq", "awq",
)
SPEC_METHODS = ("ngram", "draft_model", "eagle", "eagle3", "mtp")
MAX_SPEC_TOKENS = 8

_CONFIG_KEYS = {
    "id", "label", "model", "quantization", "speculative", "env", "serve_args", "hardware",
    "expected_failure", "max_model_len", "reference", "tags", "workloads", "expected_slow", "budget_s",
    "baseline_of",
    "build",  # quantgate.config.builds: the vLLM build the engine runs on
}
# A config id names files: baselines/<hw>/<id>.json and results/<run>/<id>/. It must not climb out of those
# folders or land on a file quantgate writes itself (noise.json, workers/, report.md, kernels/ ...).
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*(?:\.[A-Za-z0-9_+-]+)*")
RESERVED_IDS = frozenset({"noise", "workers", "kernels", "report", "summary"})
_RESERVED_SUFFIXES = (".json", ".md", ".png", ".log", ".tmp", ".lock", ".toml")
# vLLM's bind address and port belong to quantgate (127.0.0.1, a free port); --config may carry either
_FORBIDDEN_SERVE_ARGS = ("--host", "--port", "--config")
_RESERVED_ENV = frozenset({"VLLM_API_KEY"})  # quantgate's random per-engine key; a matrix must not pin it
_MAX_TOKENS = 1 << 24
WORKLOADS = ("grid", "benchy", "concurrency", "accuracy")
_SPEC_KEYS = {"method", "num_speculative_tokens", "model", "prompt_lookup_max", "prompt_lookup_min", "extra"}
_WORKLOAD_KEYS = {"outputs", "contexts", "repeats", "warmup", "request_timeout_s", "request_deadline_s", "settle_s"}
_TOP_KEYS = {"defaults", "workload", "gate", "config", "benchy", "concurrency", "accuracy",
             "reference_build"}
_ACCURACY_KEYS = {"problems", "seed", "path", "max_tokens", "concurrency"}
_GATE_KEYS = {"mode", "reference", "default_tolerance", "engine_figures"}


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise MatrixError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _str_list(value: Any, where: str, key: str, *, one_string: bool = True) -> tuple[str, ...]:
    if isinstance(value, str) and one_string:
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MatrixError(f"{where}: {key} must be a list of strings, got {value!r}")
    return tuple(value)


def _table(value: Any, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MatrixError(f"{where}: {key} must be a table, got {value!r}")
    return value


def _int(value: Any, where: str, key: str, low: int, high: int = _MAX_TOKENS) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise MatrixError(f"{where}: {key} must be an integer {low}..{high}, got {value!r}")
    return value


def _number(value: Any, where: str, key: str, low: float, high: float, *, low_open: bool = False) -> float:
    """A finite TOML number in [low, high] (or (low, high] with low_open); bools are not numbers here."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value > low if low_open else value >= low) and value <= high:
        return float(value)
    bounds = f"{'>' if low_open else '>='} {low:g} and <= {high:g}"
    raise MatrixError(f"{where}: {key} must be a number {bounds}, got {value!r}")


def _check_id(cid: Any, path: Path) -> str:
    if not isinstance(cid, str) or not cid or any(c in cid for c in " /[]"):
        raise MatrixError(f"{path}: config id must be a non-empty string without spaces, '/' or brackets, got {cid!r}")
    if not _ID_PATTERN.fullmatch(cid) or len(cid) > 100:
        raise MatrixError(f"{path}: config id {cid!r} must be letters, digits, '-', '_', '+' and inner dots "
                          f"(it names files under baselines/ and results/), at most 100 characters")
    if cid.lower() in RESERVED_IDS or cid.lower().endswith(_RESERVED_SUFFIXES):
        raise MatrixError(f"{path}: config id {cid!r} is reserved: it would collide with quantgate's own files "
                          f"(reserved: {', '.join(sorted(RESERVED_IDS))} and names ending in "
                          f"{', '.join(_RESERVED_SUFFIXES)})")
    return cid


def _check_env(env: Any, where: str, key: str = "env") -> dict[str, str]:
    env = _table(env, where, key)
    for name, value in env.items():
        if not isinstance(value, str):
            raise MatrixError(f"{where}: env var {name} must be a string, got {value!r} (quote it in TOML)")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise MatrixError(f"{where}: env var name {name!r} is not a valid environment variable name")
        if name.upper() in _RESERVED_ENV:
            raise MatrixError(f"{where}: env sets {name}: quantgate gives each engine its own random API key; "
                              f"a matrix must not pin it")
        if "\0" in value:
            raise MatrixError(f"{where}: env var {name} contains a NUL character")
    return dict(env)


def forbidden_serve_arg(arg: str) -> str | None:
    """The reserved flag an argument sets (any spelling: --host, --host=0.0.0.0, --HOST, an argparse
    abbreviation such as --hos), or None."""
    name = arg.split("=", 1)[0].lower().replace("_", "-")
    if not name.startswith("--") or len(name) < 4:
        return None
    return next((flag for flag in _FORBIDDEN_SERVE_ARGS if flag.startswith(name)), None)


def check_serve_args(args: tuple[str, ...], where: str) -> tuple[str, ...]:
    for arg in args:
        flag = forbidden_serve_arg(arg)
        if flag is not None:
            raise MatrixError(f"{where}: serve argument {arg!r} sets {flag}, which quantgate owns (engines bind "
                              f"127.0.0.1 on a port it picks; --config could set either)")
        if "\0" in arg:
            raise MatrixError(f"{where}: serve argument {arg!r} contains a NUL character")
    return args


def _parse_speculative(raw: Any, where: str) -> Speculative | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise MatrixError(f"{where}: speculative must be a table, got {raw!r}")
    _check_keys(raw, _SPEC_KEYS, f"{where} speculative")
    method = raw.get("method")
    if method not in SPEC_METHODS:
        raise MatrixError(f"{where}: unknown speculative method {method!r} (known: {', '.join(SPEC_METHODS)})")
    nst = raw.get("num_speculative_tokens")
    if not isinstance(nst, int) or isinstance(nst, bool) or not 1 <= nst <= MAX_SPEC_TOKENS:
        raise MatrixError(f"{where}: num_speculative_tokens must be an integer 1..{MAX_SPEC_TOKENS}, got {nst!r}")
    model = raw.get("model")
    if method in ("draft_model", "eagle", "eagle3") and model is None:
        raise MatrixError(f"{where}: speculative method {method!r} needs a draft 'model'")
    if model is not None and not isinstance(model, (str, dict)):
        raise MatrixError(f"{where}: speculative model must be a path or a recipe table, got {model!r}")
    if isinstance(model, str):
        model = _expand(model, where, "speculative model", strict=False)
    extra = raw.get("extra", {})
    if not isinstance(extra, dict):
        raise MatrixError(f"{where}: speculative extra must be a table, got {extra!r}")
    lookup = {k: _int(raw[k], where, f"speculative {k}", 1, 1024)
              for k in ("prompt_lookup_max", "prompt_lookup_min") if raw.get(k) is not None}
    return Speculative(
        method=method, num_speculative_tokens=nst, model=model,
        prompt_lookup_max=lookup.get("prompt_lookup_max"), prompt_lookup_min=lookup.get("prompt_lookup_min"),
        extra=extra,
    )


def _parse_config(raw: Any, defaults: Mapping[str, Any], path: Path) -> EngineConfig:
    if not isinstance(raw, dict):
        raise MatrixError(f"{path}: every [[config]] entry must be a table, got {raw!r}")
    cid = _check_id(raw.get("id"), path)
    where = f"{path}: config {cid!r}"
    _check_keys(raw, _CONFIG_KEYS, where)
    merged = {**defaults, **raw}
    env_raw = {**_check_env(defaults.get("env", {}), f"{path}: [defaults]"), **_check_env(raw.get("env", {}), where)}
    model = merged.get("model")
    if model is None:
        raise MatrixError(f"{where}: missing 'model' (a path or a recipe table such as {{recipe = 'qwen3-dense'}})")
    if isinstance(model, str):
        model = _expand(model, where, "model", strict=False)
    elif not isinstance(model, dict):
        raise MatrixError(f"{where}: model must be a path or a recipe table, got {model!r}")
    quant = merged.get("quantization")
    if quant is None:
        quant = (model.get("quantization") if isinstance(model, dict) else None) or "bf16"
    if not isinstance(quant, str) or quant not in QUANTIZATIONS:
        raise MatrixError(f"{where}: unknown quantization {quant!r} (known: {', '.join(QUANTIZATIONS)})")
    hardware = _str_list(merged.get("hardware", ["cpu"]), where, "hardware")
    serve_args = check_serve_args(
        _str_list(defaults.get("serve_args", []), f"{path}: [defaults]", "serve_args", one_string=False)
        + _str_list(raw.get("serve_args", []), where, "serve_args", one_string=False), where)
    xfail = merged.get("expected_failure")
    expected = None
    if xfail is not None:
        if isinstance(xfail, str):
            xfail = {"reason": xfail}
        if not isinstance(xfail, dict) or not isinstance(xfail.get("reason"), str):
            raise MatrixError(f"{where}: expected_failure needs a 'reason' string, got {xfail!r}")
        stage = xfail.get("stage", "start")
        if stage not in get_args(FailureStage):
            raise MatrixError(f"{where}: expected_failure stage must be 'start' or 'any', got {stage!r}")
        unknown = sorted(set(xfail) - {"reason", "stage", "hardware"})
        if unknown:
            raise MatrixError(f"{where}: expected_failure has unknown key {unknown[0]!r}")
        expected = ExpectedFailure(reason=xfail["reason"], stage=stage,
                                   hardware=_str_list(xfail.get("hardware", []), where, "expected_failure hardware"))
    mml = _int(merged.get("max_model_len", 4096), where, "max_model_len", 64)
    workloads = _str_list(merged.get("workloads", ["grid"]), where, "workloads")
    unknown_workloads = sorted(set(workloads) - set(WORKLOADS))
    if unknown_workloads or not workloads:
        raise MatrixError(f"{where}: unknown workload {unknown_workloads[0] if unknown_workloads else '(none)'!r} "
                          f"(known: {', '.join(WORKLOADS)})")
    baseline_of = raw.get("baseline_of")
    if baseline_of is not None and (not isinstance(baseline_of, str) or baseline_of == cid
                                    or not _ID_PATTERN.fullmatch(baseline_of) or baseline_of.lower() in RESERVED_IDS):
        # it names the baseline file read (baselines/<hw>/<baseline_of>.json): a config id, never a path
        raise MatrixError(f"{where}: baseline_of must name another config id, got {baseline_of!r}")
    return EngineConfig(
        workloads=workloads, expected_slow=_parse_expected_slow(merged.get("expected_slow"), where),
        budget_s=_parse_budget(merged.get("budget_s"), where), baseline_of=baseline_of,
        id=cid, model=model, quantization=quant, hardware=hardware,
        speculative=_parse_speculative(merged.get("speculative"), where),
        env=env_raw, serve_args=serve_args, max_model_len=mml, expected_failure=expected,
        label=_label(merged.get("label", ""), where), tags=_str_list(merged.get("tags", []), where, "tags"),
        source=where, build=_parse_build(merged.get("build"), where, path),
    )


def _parse_build(raw: Any, where: str, path: Path) -> Build | None:
    try:
        return parse_build(raw, where, path.parent)
    except BuildError as exc:
        raise MatrixError(str(exc)) from None


def _label(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise MatrixError(f"{where}: label must be a string, got {value!r}")
    return value


def _parse_expected_slow(raw: Any, where: str) -> ExpectedSlow | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("reason"), str) or not raw["reason"].strip():
        raise MatrixError(f"{where}: expected_slow needs a 'reason' string (the measured speed), got {raw!r}")
    _check_keys(raw, {"reason", "hardware"}, f"{where} expected_slow")
    hardware = _str_list(raw.get("hardware", []), where, "expected_slow hardware")
    return ExpectedSlow(reason=raw["reason"], hardware=hardware)


def _parse_budget(raw: Any, where: str) -> float | None:
    if raw is None:
        return None
    return _number(raw, where, "budget_s", 0.0, 7 * 24 * 3600.0, low_open=True)


def _is_count(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= _MAX_TOKENS


def _parse_workload(raw: Any, path: Path) -> WorkloadSettings:
    where = f"{path}: [workload]"
    raw = _table(raw, str(path), "[workload]")
    _check_keys(raw, _WORKLOAD_KEYS, where)
    base = WorkloadSettings()
    outputs = raw.get("outputs", base.outputs)
    if not isinstance(outputs, dict) or not outputs or not all(_is_count(v, 2) for v in outputs.values()) or any(
            c in name for name in outputs for c in ",=[]"):  # the names go into figure keys: out=<name>
        raise MatrixError(f"{where}: outputs must map names (no ',', '=' or brackets) to token counts "
                          f"2..{_MAX_TOKENS}, got {outputs!r}")
    for name in outputs:  # an output name is part of every figure name of its cells: decode_tps[ctx=0,out=NAME]
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise MatrixError(f"{where}: output name {name!r} must be letters, digits or _ . + -")
    contexts = raw.get("contexts", list(base.contexts))
    if not isinstance(contexts, list) or not all(_is_count(c, 0) for c in contexts):
        raise MatrixError(f"{where}: contexts must be a list of token counts 0..{_MAX_TOKENS}, got {contexts!r}")
    repeats = _int(raw.get("repeats", base.repeats), where, "repeats", 1, 10_000)
    warmup = _int(raw.get("warmup", base.warmup), where, "warmup", 0, 10_000)
    day = 24 * 3600.0
    return WorkloadSettings(
        outputs=dict(outputs), contexts=tuple(contexts), repeats=repeats, warmup=warmup,
        request_timeout_s=_number(raw.get("request_timeout_s", base.request_timeout_s), where,
                                  "request_timeout_s", 0.0, day, low_open=True),
        request_deadline_s=_number(raw.get("request_deadline_s", base.request_deadline_s), where,
                                   "request_deadline_s", 0.0, day, low_open=True),
        settle_s=_number(raw.get("settle_s", base.settle_s), where, "settle_s", 0.0, day),
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MatrixError(f"{path}: matrix file not found") from None
    except OSError as exc:
        raise MatrixError(f"{path}: cannot read the matrix file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # a Latin-1 file, say: TOML is UTF-8 by definition
        line = raw[:exc.start].count(b"\n") + 1
        raise MatrixError(f"{path}: not UTF-8 (byte 0x{raw[exc.start]:02x} on line {line}); "
                          f"TOML files must be UTF-8 encoded") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # the message carries "(at line L, column C)"
        raise MatrixError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:  # thousands of nested arrays: tomllib recurses
        raise MatrixError(f"{path}: invalid TOML: nested too deeply") from None


def load_matrix(path: str | os.PathLike[str]) -> Matrix:
    path = Path(path)
    data = _read_toml(path)
    _check_keys(data, _TOP_KEYS, str(path))
    defaults = _table(data.get("defaults", {}), str(path), "[defaults]")
    _check_keys(defaults, _CONFIG_KEYS - {"id", "baseline_of"}, f"{path}: [defaults]")
    raw_configs = data.get("config", [])
    if not isinstance(raw_configs, list) or not raw_configs:
        raise MatrixError(f"{path}: no [[config]] entries (config must be an array of tables, got "
                          f"{raw_configs!r})")
    configs: list[EngineConfig] = []
    seen: set[str] = set()
    for raw in raw_configs:
        cfg = _parse_config(raw, defaults, path)
        if cfg.id in seen:
            raise MatrixError(f"{path}: duplicate config id {cfg.id!r}")
        seen.add(cfg.id)
        configs.append(cfg)
    gate_raw = _table(data.get("gate", {}), str(path), "[gate]")
    _check_keys(gate_raw, _GATE_KEYS, f"{path}: [gate]")
    engine_figures = gate_raw.get("engine_figures", False)
    if not isinstance(engine_figures, bool):
        raise MatrixError(f"{path}: [gate] engine_figures must be true or false, got {engine_figures!r}")
    gate = GateSettings(
        mode=gate_raw.get("mode", "absolute"), reference=gate_raw.get("reference"),
        # a tolerance is a fraction of the baseline: 1.0 already lets a figure halve (or double) unnoticed
        default_tolerance=_number(gate_raw.get("default_tolerance", 0.25), f"{path}: [gate]", "default_tolerance",
                                  0.0, 1.0, low_open=True),
        engine_figures=engine_figures,
    )
    if not isinstance(gate.reference, (str, type(None))):
        raise MatrixError(f"{path}: [gate] reference must be a config id string, got {gate.reference!r}")
    if not isinstance(gate.mode, str) or gate.mode not in get_args(GateMode):
        raise MatrixError(f"{path}: [gate] mode must be 'absolute' or 'relative', got {gate.mode!r}")
    for cfg in configs:
        if cfg.baseline_of is not None and cfg.baseline_of not in seen:
            raise MatrixError(f"{cfg.source}: baseline_of {cfg.baseline_of!r} is not a config id of this matrix")
    if gate.mode == "relative" and gate.reference not in seen:
        raise MatrixError(f"{path}: [gate] reference {gate.reference!r} is not a config id of this matrix")
    reference_build = data.get("reference_build")
    if reference_build is not None and (bad := reference_build_error(reference_build, configs)):
        raise MatrixError(f"{path}: reference_build {reference_build!r}: {bad}")
    return Matrix(path=path, configs=tuple(configs), workload=_parse_workload(data.get("workload", {}), path),
                  gate=gate, reference_build=reference_build,
                  benchy=_settings_table(data, BenchySettings, "benchy", path),
                  concurrency=_settings_table(data, SweepSettings, "concurrency", path),
                  accuracy=_parse_accuracy(data.get("accuracy", {}), path))


_S = TypeVar("_S", BenchySettings, SweepSettings)


def _settings_table(data: Mapping[str, Any], cls: type[_S], name: str, path: Path) -> _S:
    """[benchy] / [concurrency]: BenchySettings / SweepSettings built once, here (lists become tuples)."""
    table = _table(data.get(name, {}), str(path), f"[{name}]")
    allowed = {f.name for f in fields(cls)} - {"max_model_len"}
    _check_keys(table, allowed, f"{path}: [{name}]")
    out: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    try:
        return cls(**out)
    except (TypeError, ValueError) as exc:
        raise MatrixError(f"{path}: [{name}]: {exc}") from None


def _parse_accuracy(raw: Any, path: Path) -> AccuracySettings:
    where = f"{path}: [accuracy]"
    raw = _table(raw, str(path), "[accuracy]")
    _check_keys(raw, _ACCURACY_KEYS, where)
    settings = AccuracySettings(**raw)
    if settings.path is not None and not isinstance(settings.path, str):
        raise MatrixError(f"{where} path must be a string, got {settings.path!r}")
    _int(settings.problems, where, "problems", 1 if settings.path is not None else 50, 1_000_000)
    _int(settings.seed, where, "seed", -(2**63), 2**63 - 1)
    _int(settings.max_tokens, where, "max_tokens", 1)
    _int(settings.concurrency, where, "concurrency", 1, 4096)
    if settings.path is not None:
        resolved = (path.parent / _expand(settings.path, where, "path")).resolve()
        settings = AccuracySettings(**{**raw, "path": str(resolved)})
    return settings


DEFAULT_MATRIX_GLOBS = ("fixtures/matrix/*.toml",)  # the ini's quantgate_matrix when it is not set


def matrix_files(files: list[str], patterns: list[str], root: Path) -> list[Path]:
    """The matrix files a session reads: the ones named (--qg-matrix), else the ini's globs under the rootdir.
    One lookup for the pytest plugin and `quantgate calibrate`."""
    if files:
        return [Path(f) for f in files]
    paths: list[Path] = []
    for pattern in patterns:
        paths += sorted(root.glob(pattern))
    if not paths:
        raise MatrixError(f"no matrix files found (looked for {patterns} under {root}); pass --qg-matrix")
    return paths


def load_matrices(paths: list[Path], hardware_id: str | None = None) -> tuple[Matrix, ...]:
    """Several files (one per hardware family, say) each keep their own workload and gate settings;
    config ids must be unique across them because baselines are keyed by id. With hardware_id, the configs
    that run there must have their ${VAR}s set."""
    if not paths:
        raise MatrixError("no matrix files given")
    matrices = tuple(load_matrix(p) for p in paths)
    if hardware_id is not None:
        check_variables(matrices, hardware_id)
    seen: dict[str, Path] = {}
    for matrix in matrices:
        for cfg in matrix.configs:
            if cfg.id in seen:
                raise MatrixError(f"{matrix.path}: duplicate config id {cfg.id!r} (also in {seen[cfg.id]})")
            seen[cfg.id] = matrix.path
    return matrices
