"""The attach launcher: an OpenAI-compatible server someone else started (QUANTGATE_ATTACH_URL). quantgate does
not start or stop it; the kernel record comes from a log file the user names (QUANTGATE_ATTACH_LOG), or the
kernel-selection test is skipped with a reason that says so."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ...config.environment import from_env
from ...config.matrix import EngineConfig
from .. import process


@dataclass(frozen=True)
class AttachSpec:
    base_url: str
    model_name: str | None = None  # served model name; default: the config id
    log_file: Path | None = None  # the server's log, for the kernel record


def attach_kernel_log(spec: AttachSpec) -> tuple[str | None, str]:
    """(log text or None, reason when None) for the kernel-selection test of an attached server."""
    if spec.log_file is None:
        return None, ("attached to a running server without a log: set QUANTGATE_ATTACH_LOG to its log file "
                      "to check kernel selection")
    try:
        return spec.log_file.read_text(encoding="utf-8", errors="replace"), ""
    except OSError as exc:
        return None, f"QUANTGATE_ATTACH_LOG={spec.log_file}: {exc.strerror or exc}"


@dataclass(frozen=True)
class AttachLauncher:
    """The one server at `spec.base_url`, measured under one config's name; never started or stopped."""

    spec: AttachSpec
    kind: Literal["attach"] = field(default="attach", init=False)
    starts_engines: bool = field(default=False, init=False)  # no models, GPU leases or prestart

    def start(self, config: EngineConfig, models: process.ResolvedModels | None, log_path: Path, *,
              gpus: tuple[str, ...] = ()) -> process.Engine:
        """An Engine for the server (checked by process.wait_healthy); its key comes from
        QUANTGATE_ATTACH_API_KEY (or VLLM_API_KEY), its log from the spec, not `log_path`."""
        key = from_env().attach_api_key or os.environ.get("VLLM_API_KEY") or ""
        return process.Engine(config=config, port=0, api_key=key, log_path=self.spec.log_file,
                              started_at=time.monotonic(), attached_url=self.spec.base_url,
                              model_name=self.spec.model_name)

    def kernel_log(self, engine: process.Engine) -> tuple[str | None, str]:
        return attach_kernel_log(self.spec)
