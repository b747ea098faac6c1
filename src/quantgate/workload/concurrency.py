"""Concurrency sweep: output tok/s, TTFT, TPOT and ITL at c = 1, 2, 4, 8, as `vllm bench serve` defines them.

Definitions (vllm/benchmarks/serve.py `calculate_metrics`, docs "Understanding the Latency Metrics"):

- TTFT: request sent -> first streamed chunk that carries text (vLLM's client takes the first chunk with a
  ``choices`` entry even when its text is empty; quantgate skips empty chunks, the anchors' TTFT pitfall;
  vLLM's /v1/completions never sends an empty first chunk, so on vLLM the two agree).
- ITL: gaps between consecutive content chunks, pooled over every request of the level. Under speculative
  decoding one chunk carries several accepted tokens, so ITL adds no zero-length gaps and exceeds TPOT.
- TPOT: per request ``(e2e - ttft) / (output_tokens - 1)`` with e2e to the last content chunk and
  output_tokens from ``usage``; requests with one token have no TPOT.
- output tok/s: sum of completion tokens / wall time of the level (first request sent -> last finished).

Load shape: ``--request-rate inf --max-concurrency c``: N requests, at most c in flight, all streams read
by one asyncio event loop over keep-alive connections, like vllm bench serve's client, but through
`quantgate.workload.streaming`, which only stamps reads while streams are in flight (a thread per stream lost the
median ITL near 6,000 tok/s on one core; benchmarks/README.md compares the clients).
Prompts are random token ids whose first block is unique to the request, as in
`quantgate.workload.grid`; the prefix-cache hit rate of each level's /metrics window is reported.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from ..config.settings import NONCE_TOKENS, SweepSettings
from ..stats import Figure, FigureKey
from .grid import (
    SSE_DONE,
    TRUNCATED,
    Client,
    PromptMaker,
    WorkloadError,
    carries_token,
    checked_snapshot,
    http_error,
    request_body,
    sse_event,
    sse_events,
)
from .metrics import MetricsSnapshot, parse_prometheus
from .streaming import Response, StreamError, StreamingClient
from .streaming import run as run_on_event_loop

# --------------------------------------------------------------------------------------------------------------
# one timed stream (shared with quantgate.workload.benchy)


@dataclass
class StreamTiming:
    """Client timing of one streamed /v1/completions request; every time is seconds after `start`."""

    start: float  # perf_counter when the request was sent
    ttfr_s: float  # first SSE data event of any kind (llama-benchy's TTFR)
    ttft_s: float  # first event that carries text (llama-benchy's e2e_ttft, vllm bench serve's TTFT)
    e2e_s: float  # last content chunk (vllm bench serve's latency)
    end_s: float  # [DONE] received
    content_times: list[float]  # arrival of every token chunk from the first one with text
    prompt_tokens: int
    completion_tokens: int

    @property
    def chunks(self) -> int:
        return len(self.content_times)

    @property
    def itls(self) -> list[float]:
        t = self.content_times
        return [b - a for a, b in zip(t, t[1:], strict=False)]

    @property
    def tpot_s(self) -> float:
        n = self.completion_tokens
        return (self.e2e_s - self.ttft_s) / (n - 1) if n > 1 else math.nan

    @property
    def decode_tps(self) -> float:
        """llama-benchy's tg t/s: (generated - 1) / (last content chunk - first content chunk)."""
        d = self.e2e_s - self.ttft_s
        n = self.completion_tokens - 1
        return n / d if d > 0 and n > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "ttfr_s": self.ttfr_s, "ttft_s": self.ttft_s, "e2e_s": self.e2e_s, "end_s": self.end_s,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "chunks": self.chunks, "tpot_s": self.tpot_s, "itls_s": self.itls,
        }


@dataclass
class _StreamClock:
    """Accumulates one stream's events into a StreamTiming: one piece of logic for the blocking reader
    (benchy, single requests) and the asyncio reader (the sweep)."""

    start: float
    max_tokens: int
    usage: dict[str, Any] | None = None
    ttfr: float | None = None
    events: list[float] = field(default_factory=list)  # every event with a choices entry, as vLLM counts them
    first_text: int | None = None  # index of the first one that carries a token (text, or token ids)

    def add(self, now: float, event: dict[str, Any]) -> None:
        if self.ttfr is None:
            self.ttfr = now
        if event.get("usage"):
            self.usage = event["usage"]
        choices = event.get("choices")
        if choices:
            if self.first_text is None and carries_token(choices[0]):
                self.first_text = len(self.events)
            self.events.append(now)

    def timing(self, end: float) -> StreamTiming:
        if self.usage is None:
            raise WorkloadError("stream carried no usage block (stream_options.include_usage ignored?)")
        completion = int(self.usage.get("completion_tokens") or 0)
        if completion == 0 or not self.events or self.ttfr is None:
            raise WorkloadError(f"server returned zero tokens for a {self.max_tokens}-token request")
        # leading events without text (a role-only or empty first chunk) are not the first token; later empty
        # ones are (a special token or an incomplete UTF-8 sequence held back by the detokenizer), as in vLLM's
        # client; a stream whose tokens all decode to "" carries token ids (request_body asks for them), and
        # one from a server that ignores return_token_ids is timed on all its events
        start = self.start
        times = self.events[self.first_text:] if self.first_text is not None else self.events
        return StreamTiming(
            start=start, ttfr_s=self.ttfr - start, ttft_s=times[0] - start, e2e_s=times[-1] - start,
            end_s=end - start, content_times=[t - start for t in times],
            prompt_tokens=int(self.usage.get("prompt_tokens") or 0), completion_tokens=completion,
        )


def timed_stream(http: httpx.Client, model: str, prompt: list[int] | str, max_tokens: int) -> StreamTiming:
    """POST /v1/completions with stream=True and time every event; raises WorkloadError on a bad answer."""
    body = request_body(model, prompt, max_tokens)
    clock = _StreamClock(time.perf_counter(), max_tokens)
    for now, event in sse_events(http, body):
        clock.add(now, event)
    return clock.timing(time.perf_counter())


async def fetch_stream(http: StreamingClient, model: str, prompt: list[int] | str,
                       max_tokens: int, deadline_s: float | None = None) -> tuple[float, Response]:
    """The sweep's request: POST on the shared event loop; returns (time sent, the stamped raw response).
    Parsing is left to `stream_timing` after the level, so no stream's parsing delays another's reads.
    deadline_s: the grid's request deadline (Client.deadline_s): the read timeout counts only silence, so a
    stream that trickles a token a second would otherwise hold the level forever."""
    body = request_body(model, prompt, max_tokens)
    try:
        sent, resp = await asyncio.wait_for(http.post("/v1/completions", body), deadline_s)
    except StreamError as exc:
        raise WorkloadError(str(exc)) from exc
    except TimeoutError:
        raise WorkloadError(f"request still streaming after its deadline of {deadline_s:g} s ([workload] "
                            f"request_deadline_s), max_tokens {max_tokens}") from None
    if resp.status != 200:
        raise http_error(resp.status, resp.text())
    return sent, resp


def stream_timing(sent: float, resp: Response, max_tokens: int) -> StreamTiming:
    """timed_stream's result from a response fetched by `fetch_stream`."""
    clock = _StreamClock(sent, max_tokens)
    for now, line in resp.lines():
        event = sse_event(line)
        if event == SSE_DONE:
            return clock.timing(now)
        if isinstance(event, dict):
            clock.add(now, event)
    raise WorkloadError(TRUNCATED)


# --------------------------------------------------------------------------------------------------------------
# server histograms from /metrics

def histogram_buckets(text: str, name: str, model_name: str | None = None) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of one histogram, summed over label sets (model filtered)."""
    return parse_prometheus(text, model_name=model_name).buckets.get(name, {})


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Prometheus histogram_quantile over the window after - before (linear within a bucket)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return math.nan
    rank = q * counts[-1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            width = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / width if width > 0 else 1.0)
        prev_bound, prev_count = bound, count
    return bounds[-2] if len(bounds) > 1 else math.nan


@dataclass
class ServerWindow:
    """vLLM's own view of a measured window: histogram means and quantiles, token counters."""

    snapshot_before: MetricsSnapshot
    snapshot_after: MetricsSnapshot
    text_before: str
    text_after: str
    model: str

    def mean(self, name: str) -> float:
        n = self.snapshot_after.delta(self.snapshot_before, name + "_count")
        s = self.snapshot_after.delta(self.snapshot_before, name + "_sum")
        return s / n if n > 0 else math.nan

    def quantile(self, name: str, q: float) -> float:
        return histogram_quantile(q, histogram_buckets(self.text_before, name, self.model),
                                  histogram_buckets(self.text_after, name, self.model))

    def delta(self, name: str) -> float:
        return self.snapshot_after.delta(self.snapshot_before, name)

    @property
    def prefix_cache_hit_rate(self) -> float | None:
        queries = self.delta("vllm:prefix_cache_queries_total")
        return self.delta("vllm:prefix_cache_hits_total") / queries if queries else None

    def summary(self) -> dict[str, float]:
        return {
            "ttft_mean_s": self.mean("vllm:time_to_first_token_seconds"),
            "ttft_p50_s": self.quantile("vllm:time_to_first_token_seconds", 0.5),
            "tpot_mean_s": self.mean("vllm:request_time_per_output_token_seconds"),
            "itl_mean_s": self.mean("vllm:inter_token_latency_seconds"),
            "itl_p50_s": self.quantile("vllm:inter_token_latency_seconds", 0.5),
            "e2e_mean_s": self.mean("vllm:e2e_request_latency_seconds"),
            "generation_tokens": self.delta("vllm:generation_tokens_total"),
        }


def scrape(http: httpx.Client, model: str) -> tuple[str, MetricsSnapshot]:
    resp = http.get("/metrics")
    return resp.text, checked_snapshot(resp, model)


# --------------------------------------------------------------------------------------------------------------
# the sweep


@dataclass
class LevelResult:
    concurrency: int
    repeat: int
    streams: list[StreamTiming]
    duration_s: float
    server: ServerWindow | None = None

    @property
    def output_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.streams)

    @property
    def output_tps(self) -> float:
        return self.output_tokens / self.duration_s if self.duration_s > 0 else math.nan

    @property
    def ttfts(self) -> list[float]:
        return [s.ttft_s for s in self.streams]

    @property
    def tpots(self) -> list[float]:
        return [s.tpot_s for s in self.streams if s.completion_tokens > 1]

    @property
    def itls(self) -> list[float]:
        return [gap for s in self.streams for gap in s.itls]

    @property
    def e2els(self) -> list[float]:
        return [s.e2e_s for s in self.streams]

    def percentile_ms(self, values: Sequence[float], p: float) -> float:
        return float(np.percentile(values, p)) * 1000 if values else math.nan

    def summary(self, percentiles: Sequence[float] = (50.0, 99.0)) -> dict[str, float]:
        """The keys `vllm bench serve --save-result` writes (mean_/median_/p99_ ttft,tpot,itl,e2el _ms)."""
        out: dict[str, float] = {
            "completed": float(len(self.streams)), "duration": self.duration_s,
            "total_output_tokens": float(self.output_tokens), "output_throughput": self.output_tps,
        }
        for metric, values in (("ttft", self.ttfts), ("tpot", self.tpots), ("itl", self.itls),
                               ("e2el", self.e2els)):
            out[f"mean_{metric}_ms"] = float(np.mean(values)) * 1000 if values else math.nan
            out[f"median_{metric}_ms"] = self.percentile_ms(values, 50)
            for p in percentiles:
                out[f"p{p:g}_{metric}_ms"] = self.percentile_ms(values, p)
        return out


@dataclass
class SweepResult:
    settings: SweepSettings
    levels: list[LevelResult] = field(default_factory=list)
    wall_s: float = 0.0
    prefix_cache_hit_rate: float | None = None

    @property
    def prefix_cache_suspect(self) -> bool:
        """True when the prefix cache served more than the allowed share of prompt tokens."""
        rate = self.prefix_cache_hit_rate
        return rate is not None and rate > self.settings.max_prefix_cache_hit_rate

    def of(self, c: int) -> list[LevelResult]:
        return [lv for lv in self.levels if lv.concurrency == c]

    def figures(self) -> list[Figure]:
        return sweep_figures(self)


async def _run_level(http: StreamingClient, model: str, prompts: list[list[int]], output_len: int,
                     c: int, deadline_s: float | None = None) -> tuple[list[StreamTiming], float]:
    """N prompts, at most c in flight (vllm bench serve --max-concurrency c --request-rate inf)."""
    gate = asyncio.Semaphore(c)

    async def one(prompt: list[int]) -> tuple[float, Response]:
        async with gate:
            return await fetch_stream(http, model, prompt, output_len, deadline_s)

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(one(p)) for p in prompts]
    try:
        fetched = await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    duration = time.perf_counter() - started
    return [stream_timing(sent, resp, output_len) for sent, resp in fetched], duration


def run_sweep(
    client: Client, vocab_size: int, settings: SweepSettings | None = None,
    progress: Callable[[str], None] | None = None, *, server_metrics: bool = True,
) -> SweepResult:
    """Warm up and measure every level (repeats interleaved); /metrics is scraped around each level."""
    s = settings or SweepSettings()  # validated when built (quantgate.config.settings)
    return run_on_event_loop(_sweep(client, vocab_size, s, progress, server_metrics))


async def _sweep(client: Client, vocab_size: int, s: SweepSettings, progress: Callable[[str], None] | None,
                 server_metrics: bool) -> SweepResult:
    started = time.perf_counter()
    measure, warm = PromptMaker(vocab_size, s.seed), PromptMaker(vocab_size, s.warmup_seed)
    context = s.prompt_len - NONCE_TOKENS
    out = SweepResult(settings=s)
    timeout = client.http.timeout
    # connections stay alive across levels; the /metrics scrapes below block the loop only between levels,
    # when no stream is in flight
    async with StreamingClient(
        client.base_url, {k: v for k, v in client.http.headers.items() if k.lower() == "authorization"},
        connect_timeout_s=timeout.connect or 10.0, read_timeout_s=timeout.read or 120.0,
    ) as http:
        window_text, window_start = scrape(client.http, client.model)
        for rep in range(s.repeats):
            for c in s.levels:
                if s.warmup:
                    await _run_level(http, client.model, [warm.make(context) for _ in range(max(s.warmup, c))],
                                     s.output_len, c, client.deadline_s)
                prompts = [measure.make(context) for _ in range(s.requests_for(c))]
                before = scrape(client.http, client.model) if server_metrics else None
                streams, duration = await _run_level(http, client.model, prompts, s.output_len, c,
                                                     client.deadline_s)
                window = None
                if before is not None:
                    after = scrape(client.http, client.model)
                    window = ServerWindow(before[1], after[1], before[0], after[0], client.model)
                level = LevelResult(c, rep, streams, duration, window)
                out.levels.append(level)
                if progress:
                    progress(f"rep {rep + 1}/{s.repeats} c={c}: {level.output_tps:.1f} output tok/s, "
                             f"TPOT p50 {level.percentile_ms(level.tpots, 50):.1f} ms")
        end_text, window_end = scrape(client.http, client.model)
    whole = ServerWindow(window_start, window_end, window_text, end_text, client.model)
    out.prefix_cache_hit_rate = whole.prefix_cache_hit_rate
    out.wall_s = time.perf_counter() - started
    return out


def sweep_figures(result: SweepResult) -> list[Figure]:
    """Per level: output_tps[c=N], ttft/tpot/itl/e2el _ms_p50 and _p99 (one sample per repeat, client side);
    raw per-request values in `extra`. None is gated here: the caller decides which to gate."""
    figures: list[Figure] = []
    note = (f"prefix-cache hit rate {result.prefix_cache_hit_rate:.1%} over the sweep"
            if result.prefix_cache_suspect and result.prefix_cache_hit_rate is not None else "")
    for c in result.settings.levels:
        levels = result.of(c)
        if not levels:
            continue
        key = FigureKey("", c=c)
        figures.append(Figure(
            key.named("output_tps"), "tok/s", True, tuple(lv.output_tps for lv in levels), "client",
            gated=False, note=note, extra={"requests": [len(lv.streams) for lv in levels],
                              "duration_s": [lv.duration_s for lv in levels],
                              "server": [lv.server.summary() if lv.server else {} for lv in levels]},
        ))
        for metric, getter in (("ttft", "ttfts"), ("tpot", "tpots"), ("itl", "itls"), ("e2el", "e2els")):
            for p in result.settings.percentiles:
                tag = "p50" if p == 50 else f"p{p:g}"
                samples = tuple(lv.percentile_ms(getattr(lv, getter), p) for lv in levels)
                extra: dict[str, Any] = {}
                if p == result.settings.percentiles[0]:
                    extra["raw_ms"] = [[v * 1000 for v in getattr(lv, getter)] for lv in levels]
                figures.append(Figure(key.named(f"{metric}_ms_{tag}"), "ms", False, samples, "client",
                                      gated=False, extra=extra))
    return figures
