"""The local launcher, the default: `vllm serve` as a child process of this one, on 127.0.0.1."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ...config.matrix import EngineConfig
from .. import process


@dataclass(frozen=True)
class LocalLauncher:
    """Each config's engine as a local process of `python` (a build's interpreter; None: ours)."""

    python: str | None = None
    kind: Literal["local"] = field(default="local", init=False)
    starts_engines: bool = field(default=True, init=False)

    def start(self, config: EngineConfig, models: process.ResolvedModels | None, log_path: Path, *,
              gpus: tuple[str, ...] = ()) -> process.Engine:
        assert models is not None, "the local launcher starts engines: it needs the models"
        return process.start(config, models, log_path, python=self.python, gpus=gpus)

    def kernel_log(self, engine: process.Engine) -> tuple[str | None, str]:
        return engine.log_text(), ""
