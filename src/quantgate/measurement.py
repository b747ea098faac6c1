"""One config's measurement and its raw file, results/<run>/<config>/figures.json: every figure with its raw
samples, the kernel record, the validity checks and every request. pytest-xdist workers write it; the
controller reads it back for the one report of the run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config.matrix import EngineConfig
from .gate.validity import Validity
from .stats import Figure
from .workload.grid import WorkloadResult

RAW_FILE = "figures.json"


@dataclass
class Measurement:
    config: EngineConfig
    figures: dict[str, Figure]
    kernels: dict[str, Any]
    workload: WorkloadResult
    engine_ready_s: float | None
    log_path: Path | None
    start_condition: str | None = None  # "first" start on this machine since boot, or "warm"
    validity: Validity = field(default_factory=Validity)  # quantgate.gate.validity: checked before any verdict


def save(m: Measurement, folder: Path, *, hardware_id: str, run_id: str, workload_s: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body = {
        "config": m.config.id, "hardware": hardware_id, "run_id": run_id,
        "engine_ready_s": m.engine_ready_s, "workload_s": workload_s, "start_condition": m.start_condition,
        "prefix_cache_hit_rate": m.workload.prefix_cache_hit_rate,
        "warmup_requests": m.workload.warmup_requests, "validity": m.validity.to_dict(),
        "figures": {k: {**v.summary(), **({"extra": v.extra} if v.extra else {})}
                    for k, v in sorted(m.figures.items())},
        "kernels": m.kernels,
        "requests": [r.to_dict() for r in m.workload.requests],
    }
    path = folder / RAW_FILE
    path.write_text(json.dumps(body, indent=2, sort_keys=True, default=str) + "\n")
    return path


def load(cfg: EngineConfig, folder: Path) -> Measurement | None:
    """A measurement another process saved, or None where there is none (raw requests are not reloaded)."""
    path = folder / RAW_FILE
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    figures = {
        name: Figure(name, f["unit"], bool(f["higher_is_better"]), tuple(f.get("samples", ())),
                     f.get("source", "server"), bool(f.get("gated", True)), f.get("note", ""), f.get("extra", {}))
        for name, f in body.get("figures", {}).items()
    }
    workload = WorkloadResult(warmup_requests=int(body.get("warmup_requests") or 0),
                              prefix_cache_hit_rate=body.get("prefix_cache_hit_rate"))
    return Measurement(cfg, figures, body.get("kernels") or {}, workload, body.get("engine_ready_s"),
                       folder / "engine.log", body.get("start_condition"), Validity.from_dict(body.get("validity")))
