"""The config matrix: engine configurations declared as data (TOML) and validated with errors that name the spot."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    "expected_failure", "max_model_len", "reference", "tags", "workloads", "baseline_of",
}
WORKLOADS = ("grid", "benchy", "concurrency", "accuracy")
_SPEC_KEYS = {"method", "num_speculative_tokens", "model", "prompt_lookup_max", "prompt_lookup_min", "extra"}
_WORKLOAD_KEYS = {"outputs", "contexts", "repeats", "warmup", "request_timeout_s", "settle_s"}
_TOP_KEYS = {"defaults", "workload", "gate", "config", "benchy", "concurrency", "accuracy"}
_ACCURACY_KEYS = {"problems", "seed", "path", "max_tokens", "concurrency"}
_GATE_KEYS = {"mode", "reference", "default_tolerance", "engine_figures"}


class MatrixError(ValueError):
    """A matrix file is wrong; the message names the file, the config and the value."""


@dataclass(frozen=True)
class Speculative:
    method: str
    num_speculative_tokens: int
    model: str | dict[str, Any] | None = None  # path, or a recipe table for a synthesized draft
    prompt_lookup_max: int | None = None
    prompt_lookup_min: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.method.upper()} NST={self.num_speculative_tokens}"

    def to_serve_json(self, draft_path: str | None) -> str:
        """The --speculative-config value vLLM takes."""
        body: dict[str, Any] = {"method": self.method, "num_speculative_tokens": self.num_speculative_tokens}
        if draft_path:
            body["model"] = draft_path
        if self.prompt_lookup_max is not None:
            body["prompt_lookup_max"] = self.prompt_lookup_max
        if self.prompt_lookup_min is not None:
            body["prompt_lookup_min"] = self.prompt_lookup_min
        body.update(self.extra)
        return json.dumps(body, sort_keys=True)


@dataclass(frozen=True)
class ExpectedFailure:
    reason: str
    stage: str = "start"  # "start": the engine must fail to start; "any": any test of the config may fail
    hardware: tuple[str, ...] = ()  # where the failure is expected; empty: everywhere the config runs

    def applies_to(self, hardware_id: str) -> bool:
        return not self.hardware or any(
            h == hardware_id or (h == "cpu" and hardware_id.startswith("cpu")) for h in self.hardware)


@dataclass(frozen=True)
class EngineConfig:
    id: str
    model: str | dict[str, Any]  # a path, or a recipe table (quantgate synthesizes it)
    quantization: str
    hardware: tuple[str, ...]
    speculative: Speculative | None = None
    env: dict[str, str] = field(default_factory=dict)
    serve_args: tuple[str, ...] = ()
    max_model_len: int = 4096
    expected_failure: ExpectedFailure | None = None
    label: str = ""
    tags: tuple[str, ...] = ()
    source: str = ""  # "file.toml: config 'id'" for messages
    workloads: tuple[str, ...] = ("grid",)  # grid, benchy, concurrency, accuracy
    # judged against this config's baseline and never writes one: a fresh-engine copy for calibration, or a
    # copy with an injected slowdown (scripts/gpu/copies.py writes such matrices)
    baseline_of: str | None = None

    @property
    def spec_label(self) -> str:
        return self.speculative.label if self.speculative else "—"

    def applies_to(self, hardware_id: str) -> bool:
        return any(h == hardware_id or (h == "cpu" and hardware_id.startswith("cpu")) for h in self.hardware)

    def with_serve_args(self, extra: tuple[str, ...]) -> EngineConfig:
        from dataclasses import replace

        return replace(self, serve_args=self.serve_args + extra)


@dataclass(frozen=True)
class WorkloadSettings:
    # bench.py-style output lengths; on a 2-core CPU the long run is kept short enough to repeat.
    outputs: dict[str, int] = field(default_factory=lambda: {"short": 32, "medium": 128, "long": 256})
    contexts: tuple[int, ...] = (0, 512)
    repeats: int = 3
    warmup: int = 2
    request_timeout_s: float = 120.0
    settle_s: float = 0.0


@dataclass(frozen=True)
class GateSettings:
    mode: str = "absolute"  # "relative": gate figures as ratios to the reference config of the same session
    reference: str | None = None
    default_tolerance: float = 0.25
    # gate start-up seconds, weight memory and KV-cache capacity too (session.ENGINE_FIGURES, each with its own
    # tolerance): a graph capture that hangs or a backend that doubles memory fails the gate
    engine_figures: bool = False


@dataclass(frozen=True)
class AccuracySettings:
    problems: int = 100  # generated from the seed (quantgate.accuracy), unless path names a GSM8K-style JSONL
    seed: int = 42
    path: str | None = None
    max_tokens: int = 8
    concurrency: int = 1


@dataclass(frozen=True)
class Matrix:
    path: Path
    configs: tuple[EngineConfig, ...]
    workload: WorkloadSettings
    gate: GateSettings
    benchy: dict[str, Any] = field(default_factory=dict)  # quantgate.benchy.BenchySettings fields
    concurrency: dict[str, Any] = field(default_factory=dict)  # quantgate.concurrency.SweepSettings fields
    accuracy: AccuracySettings = field(default_factory=AccuracySettings)

    def get(self, config_id: str) -> EngineConfig:
        for cfg in self.configs:
            if cfg.id == config_id:
                return cfg
        raise MatrixError(f"{self.path}: no config with id {config_id!r}")

    def for_hardware(self, hardware_id: str) -> tuple[EngineConfig, ...]:
        return tuple(c for c in self.configs if c.applies_to(hardware_id))


def _expand(value: str) -> str:
    """Model paths may name the user's settings: ${QUANTGATE_MODELS}/Qwen3-Coder-30B-A3B-AWQ."""
    return os.path.expanduser(os.path.expandvars(value))


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise MatrixError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _str_list(value: Any, where: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MatrixError(f"{where}: {key} must be a list of strings, got {value!r}")
    return tuple(value)


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
        model = _expand(model)
    extra = raw.get("extra", {})
    if not isinstance(extra, dict):
        raise MatrixError(f"{where}: speculative extra must be a table, got {extra!r}")
    return Speculative(
        method=method, num_speculative_tokens=nst, model=model,
        prompt_lookup_max=raw.get("prompt_lookup_max"), prompt_lookup_min=raw.get("prompt_lookup_min"),
        extra=extra,
    )


def _parse_config(raw: Mapping[str, Any], defaults: Mapping[str, Any], path: Path) -> EngineConfig:
    cid = raw.get("id")
    if not isinstance(cid, str) or not cid or any(c in cid for c in " /[]"):
        raise MatrixError(f"{path}: config id must be a non-empty string without spaces, '/' or brackets, got {cid!r}")
    where = f"{path}: config {cid!r}"
    _check_keys(raw, _CONFIG_KEYS, where)
    merged = {**defaults, **raw}
    env_raw = {**defaults.get("env", {}), **raw.get("env", {})}
    for key, value in env_raw.items():
        if not isinstance(value, str):
            raise MatrixError(f"{where}: env var {key} must be a string, got {value!r} (quote it in TOML)")
    model = merged.get("model")
    if model is None:
        raise MatrixError(f"{where}: missing 'model' (a path or a recipe table such as {{recipe = 'qwen3-dense'}})")
    if isinstance(model, str):
        model = _expand(model)
    elif not isinstance(model, dict):
        raise MatrixError(f"{where}: model must be a path or a recipe table, got {model!r}")
    quant = merged.get("quantization")
    if quant is None:
        quant = (model.get("quantization") if isinstance(model, dict) else None) or "bf16"
    if quant not in QUANTIZATIONS:
        raise MatrixError(f"{where}: unknown quantization {quant!r} (known: {', '.join(QUANTIZATIONS)})")
    hardware = _str_list(merged.get("hardware", ["cpu"]), where, "hardware")
    serve_args = tuple(defaults.get("serve_args", ())) + _str_list(raw.get("serve_args", []), where, "serve_args")
    xfail = merged.get("expected_failure")
    expected = None
    if xfail is not None:
        if isinstance(xfail, str):
            xfail = {"reason": xfail}
        if not isinstance(xfail, dict) or not isinstance(xfail.get("reason"), str):
            raise MatrixError(f"{where}: expected_failure needs a 'reason' string, got {xfail!r}")
        stage = xfail.get("stage", "start")
        if stage not in ("start", "any"):
            raise MatrixError(f"{where}: expected_failure stage must be 'start' or 'any', got {stage!r}")
        unknown = sorted(set(xfail) - {"reason", "stage", "hardware"})
        if unknown:
            raise MatrixError(f"{where}: expected_failure has unknown key {unknown[0]!r}")
        expected = ExpectedFailure(reason=xfail["reason"], stage=stage,
                                   hardware=_str_list(xfail.get("hardware", []), where, "expected_failure hardware"))
    mml = merged.get("max_model_len", 4096)
    if not isinstance(mml, int) or mml < 64:
        raise MatrixError(f"{where}: max_model_len must be an integer >= 64, got {mml!r}")
    workloads = _str_list(merged.get("workloads", ["grid"]), where, "workloads")
    unknown_workloads = sorted(set(workloads) - set(WORKLOADS))
    if unknown_workloads or not workloads:
        raise MatrixError(f"{where}: unknown workload {unknown_workloads[0] if unknown_workloads else '(none)'!r} "
                          f"(known: {', '.join(WORKLOADS)})")
    baseline_of = raw.get("baseline_of")
    if baseline_of is not None and (not isinstance(baseline_of, str) or not baseline_of or baseline_of == cid):
        raise MatrixError(f"{where}: baseline_of must name another config id, got {baseline_of!r}")
    return EngineConfig(
        workloads=workloads, baseline_of=baseline_of,
        id=cid, model=model, quantization=quant, hardware=hardware,
        speculative=_parse_speculative(merged.get("speculative"), where),
        env=env_raw, serve_args=serve_args, max_model_len=mml, expected_failure=expected,
        label=str(merged.get("label", "")), tags=_str_list(merged.get("tags", []), where, "tags"),
        source=where,
    )


def _parse_workload(raw: Mapping[str, Any], path: Path) -> WorkloadSettings:
    where = f"{path}: [workload]"
    _check_keys(raw, _WORKLOAD_KEYS, where)
    base = WorkloadSettings()
    outputs = raw.get("outputs", base.outputs)
    if not isinstance(outputs, dict) or not outputs or not all(
        isinstance(v, int) and v > 1 for v in outputs.values()
    ):
        raise MatrixError(f"{where}: outputs must map names to token counts > 1, got {outputs!r}")
    contexts = raw.get("contexts", list(base.contexts))
    if not isinstance(contexts, list) or not all(isinstance(c, int) and c >= 0 for c in contexts):
        raise MatrixError(f"{where}: contexts must be a list of token counts >= 0, got {contexts!r}")
    repeats = raw.get("repeats", base.repeats)
    if not isinstance(repeats, int) or repeats < 1:
        raise MatrixError(f"{where}: repeats must be an integer >= 1, got {repeats!r}")
    warmup = raw.get("warmup", base.warmup)
    if not isinstance(warmup, int) or warmup < 0:
        raise MatrixError(f"{where}: warmup must be an integer >= 0, got {warmup!r}")
    return WorkloadSettings(
        outputs=dict(outputs), contexts=tuple(contexts), repeats=repeats, warmup=warmup,
        request_timeout_s=float(raw.get("request_timeout_s", base.request_timeout_s)),
        settle_s=float(raw.get("settle_s", base.settle_s)),
    )


def load_matrix(path: str | os.PathLike[str]) -> Matrix:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MatrixError(f"{path}: matrix file not found") from None
    except tomllib.TOMLDecodeError as exc:  # the message carries "(at line L, column C)"
        raise MatrixError(f"{path}: invalid TOML: {exc}") from None
    _check_keys(data, _TOP_KEYS, str(path))
    defaults = data.get("defaults", {})
    raw_configs = data.get("config", [])
    if not isinstance(raw_configs, list) or not raw_configs:
        raise MatrixError(f"{path}: no [[config]] entries")
    configs: list[EngineConfig] = []
    seen: set[str] = set()
    for raw in raw_configs:
        cfg = _parse_config(raw, defaults, path)
        if cfg.id in seen:
            raise MatrixError(f"{path}: duplicate config id {cfg.id!r}")
        seen.add(cfg.id)
        configs.append(cfg)

    gate_raw = data.get("gate", {})
    _check_keys(gate_raw, _GATE_KEYS, f"{path}: [gate]")
    gate = GateSettings(
        mode=gate_raw.get("mode", "absolute"), reference=gate_raw.get("reference"),
        default_tolerance=float(gate_raw.get("default_tolerance", 0.25)),
        engine_figures=bool(gate_raw.get("engine_figures", False)),
    )
    if gate.mode not in ("absolute", "relative"):
        raise MatrixError(f"{path}: [gate] mode must be 'absolute' or 'relative', got {gate.mode!r}")
    if gate.mode == "relative" and gate.reference not in seen:
        raise MatrixError(f"{path}: [gate] reference {gate.reference!r} is not a config id of this matrix")
    return Matrix(path=path, configs=tuple(configs), workload=_parse_workload(data.get("workload", {}), path),
                  gate=gate, benchy=_settings_table(data, "benchy", path),
                  concurrency=_settings_table(data, "concurrency", path),
                  accuracy=_parse_accuracy(data.get("accuracy", {}), path))


def _settings_table(data: Mapping[str, Any], name: str, path: Path) -> dict[str, Any]:
    """[benchy] / [concurrency]: the fields of BenchySettings / SweepSettings, lists become tuples."""
    from dataclasses import fields

    from .benchy import BenchySettings
    from .concurrency import SweepSettings

    table = data.get(name, {})
    cls = BenchySettings if name == "benchy" else SweepSettings
    allowed = {f.name for f in fields(cls)} - {"max_model_len"}
    _check_keys(table, allowed, f"{path}: [{name}]")
    out: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    try:
        cls(**out)
    except (TypeError, ValueError) as exc:
        raise MatrixError(f"{path}: [{name}]: {exc}") from None
    return out


def _parse_accuracy(raw: Mapping[str, Any], path: Path) -> AccuracySettings:
    _check_keys(raw, _ACCURACY_KEYS, f"{path}: [accuracy]")
    settings = AccuracySettings(**raw)
    if not isinstance(settings.problems, int) or settings.problems < 50 and settings.path is None:
        raise MatrixError(f"{path}: [accuracy] problems must be an integer >= 50, got {settings.problems!r}")
    if settings.path is not None:
        resolved = (path.parent / _expand(settings.path)).resolve()
        settings = AccuracySettings(**{**raw, "path": str(resolved)})
    return settings


def load_matrices(paths: list[Path]) -> tuple[Matrix, ...]:
    """Several files (one per hardware family, say) each keep their own workload and gate settings;
    config ids must be unique across them because baselines are keyed by id."""
    if not paths:
        raise MatrixError("no matrix files given")
    matrices = tuple(load_matrix(p) for p in paths)
    seen: dict[str, Path] = {}
    for matrix in matrices:
        for cfg in matrix.configs:
            if cfg.id in seen:
                raise MatrixError(f"{matrix.path}: duplicate config id {cfg.id!r} (also in {seen[cfg.id]})")
            seen[cfg.id] = matrix.path
    return matrices
