"""The matrix's records: an engine config and the settings a matrix file gives its workloads and its gate."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import QuantgateError
from ..hardware import listed_for
from .builds import Build
from .settings import BenchySettings, SweepSettings

# "absolute": figures against the stored baselines; "relative": decode speed as ratios to the reference config
# of the same session (absolute speed drifts between CPU hosts)
GateMode = Literal["absolute", "relative"]


# "start": the engine must fail to start; "any": any test of the config may fail
FailureStage = Literal["start", "any"]


class MatrixError(QuantgateError, ValueError):
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
    stage: FailureStage = "start"
    hardware: tuple[str, ...] = ()  # where the failure is expected; empty: everywhere the config runs

    def applies_to(self, hardware_id: str) -> bool:
        return not self.hardware or listed_for(self.hardware, hardware_id)


@dataclass(frozen=True)
class ExpectedSlow:
    """A config whose code path crawls on some CPU kind (fp8 emulated at 0.7 tok/s): its tests are skipped
    there with the measured speed as the reason, so it does not hold the lane up."""

    reason: str
    hardware: tuple[str, ...] = ()  # where it crawls; empty: everywhere the config runs

    def applies_to(self, hardware_id: str) -> bool:
        return not self.hardware or listed_for(self.hardware, hardware_id)


# Seconds a config's workloads may take after its engine is up, unless the matrix says otherwise
# (budget_s): a 2-core CPU runs a whole config in a few minutes; a GPU config with benchy and a
# concurrency sweep needs longer.
DEFAULT_BUDGET_S = {"cpu": 900.0, "gpu": 1800.0}


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
    expected_slow: ExpectedSlow | None = None
    budget_s: float | None = None  # None: DEFAULT_BUDGET_S for the hardware
    # judged against this config's baseline and never writes one: a fresh-engine copy for calibration, or a
    # copy with an injected slowdown (scripts/gpu/copies.py writes such matrices)
    baseline_of: str | None = None
    build: Build | None = None  # quantgate.config.builds; None: the interpreter (or image) of the session

    @property
    def spec_label(self) -> str:
        return self.speculative.label if self.speculative else "—"

    def applies_to(self, hardware_id: str) -> bool:
        return listed_for(self.hardware, hardware_id)

    def gated_on(self, hardware_id: str) -> bool:
        """Runs and is gated on this hardware: neither skipped there as slow nor expected to fail there."""
        return (self.applies_to(hardware_id)
                and not (self.expected_slow and self.expected_slow.applies_to(hardware_id))
                and not (self.expected_failure and self.expected_failure.applies_to(hardware_id)))

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
    request_timeout_s: float = 120.0  # silence: no byte for this long
    request_deadline_s: float = 600.0  # wall clock of one request: a stream trickling a token a second ends too
    settle_s: float = 0.0


@dataclass(frozen=True)
class GateSettings:
    mode: GateMode = "absolute"
    reference: str | None = None
    default_tolerance: float = 0.25
    # gate start-up seconds, weight memory and KV-cache capacity too (engine.figures.ENGINE_FIGURES, each with its own
    # tolerance): a graph capture that hangs or a backend that doubles memory fails the gate
    engine_figures: bool = False


@dataclass(frozen=True)
class AccuracySettings:
    problems: int = 100  # generated from the seed (quantgate.workload.accuracy), unless path names a GSM8K-style JSONL
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
    benchy: BenchySettings = field(default_factory=BenchySettings)  # max_model_len is the config's, at run time
    concurrency: SweepSettings = field(default_factory=SweepSettings)
    accuracy: AccuracySettings = field(default_factory=AccuracySettings)
    reference_build: str | None = None  # a build label: the report's "Delta vs <reference build>" table

    def get(self, config_id: str) -> EngineConfig:
        for cfg in self.configs:
            if cfg.id == config_id:
                return cfg
        raise MatrixError(f"{self.path}: no config with id {config_id!r}")

    def for_hardware(self, hardware_id: str) -> tuple[EngineConfig, ...]:
        return tuple(c for c in self.configs if c.applies_to(hardware_id))
