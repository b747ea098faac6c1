"""llama-benchy-style measurements against an OpenAI-compatible server: prefill (pp) and decode (tg) at depth.

Definitions follow llama-benchy (`src/llama_benchy/results.py`, anchors 1.1):

- depth d: context already in the prompt before the measured part; with the prefix cache defeated the
  server processes d + pp tokens, so a pp run's prompt is exactly d + pp tokens.
- TTFR: request sent -> first response event of any kind (``ttfr_ms``).
- estimated latency: the median TTFR of a few 1-token requests on a one-block prompt (llama-benchy's
  ``--latency-mode generation``); ``--latency-mode none`` uses 0.
- est_ppt = TTFR - estimated latency: the estimated prompt processing time (``est_ppt_ms``).
- pp t/s = prompt tokens / est_ppt (``pp_tps``); prompt tokens from ``usage`` when within 20% of the
  expected d + pp, as llama-benchy does, else the expected count.
- e2e TTFT: request sent -> first event that carries text (``ttft_ms``).
- tg t/s = (generated - 1) / (last content chunk - first content chunk) (``tg_tps``).

Every prompt is random token ids whose first 16-token block is unique to the request (the nonce), so the
prefix cache cannot serve any of it; warm-up prompts come from another random stream. The measured
window's prefix-cache hit rate from /metrics is reported and `BenchyResult.prefix_cache_suspect` is True
above ~5%. /metrics is also scraped around every request, which gives the server's own prefill and decode
tok/s next to the client's (``pp_tps_server``, ``tg_tps_server``): on a starved 2-core host those are the
trustworthy ones.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config.settings import NONCE_TOKENS, BenchySettings
from ..stats import Figure, FigureKey, RecordSource
from .concurrency import StreamTiming, timed_stream
from .grid import Client, PromptMaker
from .metrics import MetricsSnapshot

BENCHY_SEED = 4545
BENCHY_WARMUP_SEED = 4646
BENCHY_PROBE_SEED = 4747


@dataclass
class BenchyRun:
    kind: str  # "pp" or "tg"
    size: int  # pp or tg
    depth: int
    repeat: int
    expected_prompt_tokens: int
    timing: StreamTiming
    latency_s: float
    server_prefill_s: float | None = None
    server_decode_s: float | None = None
    server_ttft_s: float | None = None

    @property
    def cell(self) -> FigureKey:
        """The shape with no metric yet: pp=512,depth=0 or tg=32,depth=0."""
        if self.kind == "pp":
            return FigureKey("", pp=self.size, depth=self.depth)
        return FigureKey("", tg=self.size, depth=self.depth)

    @property
    def key(self) -> str:
        return self.cell.params

    @property
    def prompt_tokens(self) -> int:
        """usage.prompt_tokens when within 20% of what we sent (llama-benchy's rule), else what we sent."""
        got, want = self.timing.prompt_tokens, self.expected_prompt_tokens
        return got if want and abs(got - want) <= 0.2 * want else want

    @property
    def est_ppt_s(self) -> float:
        return self.timing.ttfr_s - self.latency_s

    @property
    def pp_tps(self) -> float:
        t = self.est_ppt_s
        return self.prompt_tokens / t if t > 0 else math.nan

    @property
    def tg_tps(self) -> float:
        return self.timing.decode_tps

    @property
    def server_pp_tps(self) -> float:
        p = self.server_prefill_s
        return self.prompt_tokens / p if p and p > 0 else math.nan

    @property
    def server_tg_tps(self) -> float:
        d, n = self.server_decode_s, self.timing.completion_tokens - 1
        return n / d if d and d > 0 and n > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "size": self.size, "depth": self.depth, "repeat": self.repeat,
            "expected_prompt_tokens": self.expected_prompt_tokens, "latency_s": self.latency_s,
            "est_ppt_s": self.est_ppt_s, "pp_tps": self.pp_tps, "tg_tps": self.tg_tps,
            "server_prefill_s": self.server_prefill_s, "server_decode_s": self.server_decode_s,
            "server_ttft_s": self.server_ttft_s, **self.timing.to_dict(),
        }


@dataclass
class BenchyResult:
    settings: BenchySettings
    runs: list[BenchyRun] = field(default_factory=list)
    latency_s: float = 0.0
    latency_samples_s: list[float] = field(default_factory=list)
    warmup_requests: int = 0
    prefix_cache_hit_rate: float | None = None
    wall_s: float = 0.0

    @property
    def prefix_cache_suspect(self) -> bool:
        """True when /metrics says the prefix cache served more than ~5% of the window's prompt tokens:
        the pp figures are then inflated and should not be trusted (or gated)."""
        rate = self.prefix_cache_hit_rate
        return rate is not None and rate > self.settings.max_prefix_cache_hit_rate

    def figures(self, record_source: RecordSource = "client") -> list[Figure]:
        return benchy_figures(self, record_source)


def _server_deltas(run: BenchyRun, before: MetricsSnapshot, after: MetricsSnapshot) -> None:
    run.server_prefill_s = after.delta(before, "vllm:request_prefill_time_seconds_sum")
    run.server_decode_s = after.delta(before, "vllm:request_decode_time_seconds_sum")
    run.server_ttft_s = after.delta(before, "vllm:time_to_first_token_seconds_sum")


def estimate_latency(client: Client, vocab_size: int, probes: int = 3) -> list[float]:
    """TTFR of 1-token requests on a one-block unique prompt: the fixed cost llama-benchy subtracts."""
    maker = PromptMaker(vocab_size, BENCHY_PROBE_SEED)
    return [timed_stream(client.http, client.model, maker.make(0), 1).ttfr_s for _ in range(probes)]


def run_benchy(
    client: Client, vocab_size: int, settings: BenchySettings | None = None,
    progress: Callable[[str], None] | None = None, *, per_request_metrics: bool = True,
) -> BenchyResult:
    """Warm up every shape, estimate the latency, then measure pp and tg runs with repeats interleaved."""
    s = settings or BenchySettings()  # validated when built (quantgate.config.settings)
    started = time.perf_counter()
    out = BenchyResult(settings=s)
    measure, warm = PromptMaker(vocab_size, BENCHY_SEED), PromptMaker(vocab_size, BENCHY_WARMUP_SEED)
    http, model = client.http, client.model

    # a plan of (kind, size, depth, prompt context after the nonce block, max_tokens)
    plan: list[tuple[str, int, int, int, int]] = []
    plan += [("pp", pp, d, d + pp - NONCE_TOKENS, s.pp_gen_tokens) for pp, d in s.pp_cells()]
    plan += [("tg", tg, d, d + s.tg_prompt_tokens - NONCE_TOKENS, tg) for tg, d in s.tg_cells()]
    for _ in range(s.warmup):
        for _kind, _size, _depth, ctx, max_tokens in plan:
            timed_stream(http, model, warm.make(ctx), max_tokens)
            out.warmup_requests += 1
    if s.latency_mode == "generation":
        out.latency_samples_s = estimate_latency(client, vocab_size, s.latency_probes)
        out.latency_s = statistics.median(out.latency_samples_s)
    window_start = client.metrics()
    for rep in range(s.repeats):
        for kind, size, depth, ctx, max_tokens in plan:
            before = client.metrics() if per_request_metrics else None
            timing = timed_stream(http, model, measure.make(ctx), max_tokens)
            run = BenchyRun(kind, size, depth, rep, NONCE_TOKENS + ctx, timing, out.latency_s)
            if before is not None:
                _server_deltas(run, before, client.metrics())
            out.runs.append(run)
            if progress:
                value = f"{run.pp_tps:.0f} pp t/s" if kind == "pp" else f"{run.tg_tps:.1f} tg t/s"
                progress(f"rep {rep + 1}/{s.repeats} {run.key}: {value}")
    window_end = client.metrics()
    queries = window_end.delta(window_start, "vllm:prefix_cache_queries_total")
    hits = window_end.delta(window_start, "vllm:prefix_cache_hits_total")
    out.prefix_cache_hit_rate = hits / queries if queries else None
    out.wall_s = time.perf_counter() - started
    return out


def benchy_figures(result: BenchyResult, record_source: RecordSource = "client") -> list[Figure]:
    """Figures per shape, with raw samples (one per repeat):

    pp runs: ``pp_tps[pp=512,depth=0]`` (record source), ``pp_tps_<other>[...]``, ``ttfr_ms[...]``,
    ``est_ppt_ms[...]``, ``ttft_ms[...]`` (e2e to the first content token);
    tg runs: ``tg_tps[tg=32,depth=0]``, ``tg_tps_<other>[...]``, ``ttft_ms[tg=32,depth=0]``.
    The figure of record is gated unless the prefix cache served more than the allowed share.
    """
    if record_source not in ("client", "server"):
        raise ValueError("record_source must be 'client' or 'server'")
    other: RecordSource = "server" if record_source == "client" else "client"
    suspect = result.prefix_cache_suspect
    note = (f"prefix-cache hit rate {result.prefix_cache_hit_rate:.1%} in the measured window: inflated"
            if suspect and result.prefix_cache_hit_rate is not None else "")
    figures: list[Figure] = []
    keys: list[str] = []
    for run in result.runs:
        if run.key not in keys:
            keys.append(run.key)
    for key in keys:
        rows = [r for r in result.runs if r.key == key]
        kind, cell = rows[0].kind, rows[0].cell
        raw = {"runs": [r.to_dict() for r in rows]}
        if kind == "pp":
            by = {"client": tuple(r.pp_tps for r in rows), "server": tuple(r.server_pp_tps for r in rows)}
            figures.append(Figure(cell.named("pp_tps"), "tok/s", True, by[record_source], record_source,
                                  gated=not suspect, note=note,
                                  extra={"latency_s": result.latency_s, **raw}))
            figures.append(Figure(cell.named(f"pp_tps_{other}"), "tok/s", True, by[other], other, gated=False,
                                  note=note))
            figures.append(Figure(cell.named("ttfr_ms"), "ms", False, tuple(1000 * r.timing.ttfr_s for r in rows),
                                  "client", gated=False))
            figures.append(Figure(cell.named("est_ppt_ms"), "ms", False, tuple(1000 * r.est_ppt_s for r in rows),
                                  "client", gated=False, extra={"latency_s": result.latency_s}))
        else:
            by = {"client": tuple(r.tg_tps for r in rows), "server": tuple(r.server_tg_tps for r in rows)}
            figures.append(Figure(cell.named("tg_tps"), "tok/s", True, by[record_source], record_source,
                                  gated=True, extra=raw))
            figures.append(Figure(cell.named(f"tg_tps_{other}"), "tok/s", True, by[other], other, gated=False))
        figures.append(Figure(cell.named("ttft_ms"), "ms", False, tuple(1000 * r.timing.ttft_s for r in rows),
                              "client", gated=False))
    return figures
