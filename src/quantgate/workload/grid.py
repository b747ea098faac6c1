"""Workloads against an OpenAI-compatible server: a streaming client, the bench.py-style grid, figures.

Every measured prompt starts with a block of token ids that no other prompt in the session shares, so the
prefix cache cannot serve it; warm-up prompts come from a different random stream. Requests run one at a
time and /metrics is scraped around each one, which gives a server-side figure per request next to the
client's own timing.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import httpx

from ..config.matrix import WorkloadSettings
from ..config.settings import NONCE_TOKENS
from ..errors import QuantgateError
from ..stats import Figure, FigureKey, RecordSource
from .metrics import REQUIRED, MetricsError, MetricsSnapshot, SpecDecodeWindow, parse_prometheus, spec_decode_window

MEASURE_SEED = 42
WARMUP_SEED = 4242


class WorkloadError(QuantgateError, RuntimeError):
    """The server answered wrongly (HTTP error, broken stream, missing usage, zero tokens)."""


def checked_snapshot(resp: httpx.Response, model: str) -> MetricsSnapshot:
    """A /metrics answer parsed, with the series every window reads present, or one WorkloadError saying
    which are missing (not NaN figures and a KeyError later)."""
    if resp.status_code != 200:
        raise WorkloadError(f"GET {resp.request.url} answered HTTP {resp.status_code}")
    try:
        snapshot = parse_prometheus(resp.text, model_name=model)
        snapshot.require(REQUIRED, model_name=model)
    except MetricsError as exc:
        raise WorkloadError(f"GET {resp.request.url}: {exc}") from None
    return snapshot
class BudgetExceeded(WorkloadError):
    """A config's workloads cannot finish (quantgate.workload.budget's probe) or did not finish within its budget."""


@dataclass(frozen=True)
class Cell:
    context: int
    output_name: str
    max_tokens: int

    @property
    def figure_key(self) -> FigureKey:
        """The cell with no metric yet; ``figure("decode_tps")`` names ``decode_tps[ctx=512,out=long]``."""
        return FigureKey("", ctx=self.context, out=self.output_name)

    def figure(self, metric: str) -> str:
        return self.figure_key.named(metric)

    @property
    def key(self) -> str:
        """``ctx=512,out=long``: the cell of a raw request record."""
        return self.figure_key.params


@dataclass
class RequestResult:
    cell: str
    prompt_tokens: int
    completion_tokens: int
    client_ttft_s: float
    client_e2e_s: float
    client_decode_s: float  # first content chunk to last
    chunks: int
    server_ttft_s: float | None = None
    server_prefill_s: float | None = None
    server_decode_s: float | None = None
    server_e2e_s: float | None = None
    prefix_cache_hits: float | None = None

    @property
    def client_decode_tps(self) -> float:
        n = self.completion_tokens - 1
        return n / self.client_decode_s if self.client_decode_s > 0 and n > 0 else float("nan")

    @property
    def server_decode_tps(self) -> float:
        n = self.completion_tokens - 1
        d = self.server_decode_s
        return n / d if d and d > 0 and n > 0 else float("nan")

    @property
    def server_prefill_tps(self) -> float:
        p = self.server_prefill_s
        return self.prompt_tokens / p if p and p > 0 else float("nan")

    @property
    def burst(self) -> bool:
        """All chunks arrived together: the client's decode timing says nothing about the engine."""
        if self.server_decode_s is None or self.server_decode_s <= 0:
            return False
        return self.client_decode_s < 0.25 * self.server_decode_s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(client_decode_tps=self.client_decode_tps, server_decode_tps=self.server_decode_tps,
                 server_prefill_tps=self.server_prefill_tps, burst=self.burst)
        return d


@dataclass
class WorkloadResult:
    requests: list[RequestResult] = field(default_factory=list)
    warmup_requests: int = 0
    spec: SpecDecodeWindow | None = None
    prefix_cache_hit_rate: float | None = None
    wall_s: float = 0.0


def grid(settings: WorkloadSettings, max_model_len: int) -> list[Cell]:
    """Context x output cells that fit the config's max-model-len (the seeds' ctx x short/medium/long table)."""
    cells = []
    for ctx in settings.contexts:
        for name, max_tokens in settings.outputs.items():
            if ctx + NONCE_TOKENS + max_tokens <= max_model_len:
                cells.append(Cell(ctx, name, max_tokens))
    return cells


class PromptMaker:
    """Random token-id prompts: exact lengths without a tokenizer, unique per request."""

    def __init__(self, vocab_size: int, seed: int) -> None:
        self._rng = random.Random(seed)
        # keep clear of byte tokens at the bottom and special tokens at the top of the vocabulary
        self.low = 256 if vocab_size > 2048 else 16
        self.high = vocab_size - (512 if vocab_size > 16384 else 64)

    def make(self, context: int) -> list[int]:
        return [self._rng.randrange(self.low, self.high) for _ in range(NONCE_TOKENS + context)]


SSE_DONE = "[DONE]"


def sse_event(line: str) -> dict[str, Any] | str | None:
    """One line of an OpenAI SSE stream: the event object of a `data:` line, SSE_DONE at the end, None for any
    other line. The one SSE parser, shared by the blocking reader below and the sweep's asyncio reader."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == SSE_DONE:
        return SSE_DONE
    try:
        event = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise WorkloadError(f"malformed SSE event from server: {payload[:120]!r}") from exc
    if not isinstance(event, dict):
        raise WorkloadError(f"SSE event is not an object: {payload[:120]!r}")
    return event


TRUNCATED = "stream ended without [DONE] (truncated response)"


def http_error(status: int, text: str) -> WorkloadError:
    return WorkloadError(f"POST /v1/completions answered HTTP {status}: {text[:300]!r}")


def sse_events(http: httpx.Client, body: dict[str, Any],
               deadline_s: float | None = None) -> Iterator[tuple[float, dict[str, Any]]]:
    """POST a streaming /v1/completions; yield (perf_counter time of arrival, event) for every SSE data event.
    Raises WorkloadError on an HTTP error, a malformed event, a stream that ends without [DONE], or one still
    streaming deadline_s after the request went out (httpx's timeout counts only silence, so a stream that
    trickles a token a second would otherwise never end)."""
    start = time.perf_counter()
    events = 0
    with http.stream("POST", "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            resp.read()
            raise http_error(resp.status_code, resp.text)
        for line in resp.iter_lines():
            now = time.perf_counter()
            if deadline_s is not None and now - start > deadline_s:
                raise WorkloadError(
                    f"request still streaming after its deadline of {deadline_s:g} s ([workload] "
                    f"request_deadline_s): {events} events in {now - start:.0f} s, max_tokens "
                    f"{body.get('max_tokens')}")
            event = sse_event(line)
            if event == SSE_DONE:
                return
            if isinstance(event, dict):
                events += 1
                yield now, event
    raise WorkloadError(TRUNCATED)


def request_body(model: str, prompt: list[int] | str, max_tokens: int) -> dict[str, Any]:
    """The one streamed /v1/completions body, for the grid's blocking client and the benchy/sweep readers
    alike (a copy in quantgate.workload.concurrency once drifted and lost return_token_ids)."""
    return {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "seed": 42,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
        # token ids in every chunk: a chunk whose token detokenizes to "" (a random-weight model that
        # greedily repeats a lone UTF-8 continuation byte or a special token, seen on the H100) still
        # counts as a token for TTFT and decode timing
        "return_token_ids": True,
    }


def carries_token(choice: dict[str, Any]) -> bool:
    """A streamed choice that holds a generated token: text, or token ids whose text is still "". Empty first
    chunks (role-only or "") are not the first token: the anchors' TTFT pitfall."""
    return bool(choice.get("text") or choice.get("token_ids"))


class Client:
    """A small streaming client for /v1/completions; timing uses time.perf_counter around the socket reads."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 120.0,
                 deadline_s: float | None = None, budget: tuple[float, str] | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url
        self.model = model
        self.deadline_s = deadline_s  # wall clock of one streamed request; timeout_s counts silence only
        # (seconds, what): no request starts once the config's budget is spent, whichever workload sends it
        self._budget_end = (time.monotonic() + budget[0], budget[0], budget[1]) if budget else None
        self.http = httpx.Client(base_url=base_url, headers=headers, event_hooks={"request": [self._check_budget]},
                                 timeout=httpx.Timeout(timeout_s, connect=10.0))

    def _check_budget(self, request: httpx.Request) -> None:
        if self._budget_end is not None and time.monotonic() > self._budget_end[0]:
            _, seconds, what = self._budget_end
            raise BudgetExceeded(f"{what}: its workloads ran past its budget of {seconds:g} s "
                                 f"(budget_s in the matrix, or --qg-budget S)")

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def metrics(self) -> MetricsSnapshot:
        return checked_snapshot(self.http.get("/metrics"), self.model)

    def complete(self, prompt: list[int] | str, max_tokens: int, cell: str = "") -> RequestResult:
        body = request_body(self.model, prompt, max_tokens)
        usage: dict[str, Any] | None = None
        first: float | None = None
        last: float | None = None
        chunks = 0
        start = time.perf_counter()
        for now, event in sse_events(self.http, body, self.deadline_s):
            if event.get("usage"):
                usage = event["usage"]
            choices = event.get("choices") or []
            # empty first chunks (role-only or "") are not the first token: anchors' TTFT pitfall
            if choices and carries_token(choices[0]):
                first = first if first is not None else now
                last = now
                chunks += 1
        end = time.perf_counter()
        if usage is None:
            raise WorkloadError("stream carried no usage block (stream_options.include_usage ignored?)")
        completion = int(usage.get("completion_tokens") or 0)
        if completion == 0 or first is None or last is None:
            raise WorkloadError(f"server returned zero tokens for a {max_tokens}-token request")
        return RequestResult(
            cell=cell, prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=completion,
            client_ttft_s=first - start, client_e2e_s=end - start, client_decode_s=last - first, chunks=chunks,
        )


def _attach_server_figures(result: RequestResult, before: MetricsSnapshot, after: MetricsSnapshot) -> None:
    result.server_ttft_s = after.delta(before, "vllm:time_to_first_token_seconds_sum")
    result.server_prefill_s = after.delta(before, "vllm:request_prefill_time_seconds_sum")
    result.server_decode_s = after.delta(before, "vllm:request_decode_time_seconds_sum")
    result.server_e2e_s = after.delta(before, "vllm:e2e_request_latency_seconds_sum")
    result.prefix_cache_hits = after.delta(before, "vllm:prefix_cache_hits_total")


# warm-up rounds added at most when the warm-up's last request still logged a late compile
EXTRA_WARMUP_ROUNDS = 2


class WarmupWatch(Protocol):
    """What run_grid tells quantgate.gate.validity.MeasureWatch: each warm-up request, and where measuring starts."""

    def warmup_request(self) -> None: ...
    def compiled_late(self) -> list[str]: ...  # kernels vLLM JIT-compiled during the last warm-up request
    def measuring(self) -> None: ...


def warm_up(client: Client, settings: WorkloadSettings, cells: list[Cell], vocab_size: int, out: WorkloadResult,
            progress: Callable[[str], None] | None = None, watch: WarmupWatch | None = None) -> None:
    """Warm up on prompts of every context length; while vLLM names a kernel it compiled during the warm-up's
    last request, one more round (quantgate.gate.validity: a compile during measurement makes figures invalid)."""
    warm = PromptMaker(vocab_size, WARMUP_SEED)
    shortest = min(settings.outputs.values())
    if progress and settings.warmup:
        progress("warm-up")

    def one_round() -> None:
        for ctx in sorted({c.context for c in cells}):
            for _ in range(settings.warmup):
                if watch is not None:
                    watch.warmup_request()
                client.complete(warm.make(ctx), shortest, cell="warmup")
                out.warmup_requests += 1

    one_round()
    for _ in range(EXTRA_WARMUP_ROUNDS if watch is not None and settings.warmup else 0):
        late = watch.compiled_late() if watch is not None else []
        if not late:
            break
        if progress:
            progress(f"warm-up: vLLM compiled {', '.join(late)} late: one more round")
        one_round()


def measure_request(client: Client, prompt: list[int], cell: Cell) -> RequestResult:
    """One measured request, with /metrics scraped around it for the server's own timing of it."""
    before = client.metrics()
    result = client.complete(prompt, cell.max_tokens, cell=cell.key)
    _attach_server_figures(result, before, client.metrics())
    return result


def close_window(client: Client, window_start: MetricsSnapshot, out: WorkloadResult) -> None:
    """The measured window's speculative-decoding counters and prefix-cache hit rate."""
    window_end = client.metrics()
    out.spec = spec_decode_window(window_start, window_end)
    queries = window_end.delta(window_start, "vllm:prefix_cache_queries_total")
    hits = window_end.delta(window_start, "vllm:prefix_cache_hits_total")
    out.prefix_cache_hit_rate = hits / queries if queries else None


def run_grid(
    client: Client, settings: WorkloadSettings, cells: list[Cell], vocab_size: int,
    progress: Callable[[str], None] | None = None, watch: WarmupWatch | None = None,
) -> WorkloadResult:
    """Warm up on prompts of every context length, then measure cells interleaved across repeats so a slow
    drift of the machine touches every cell alike."""
    started = time.perf_counter()
    measure = PromptMaker(vocab_size, MEASURE_SEED)
    out = WorkloadResult()
    warm_up(client, settings, cells, vocab_size, out, progress, watch)
    if watch is not None:
        watch.measuring()
    window_start = client.metrics()
    total = settings.repeats * len(cells)
    for _ in range(settings.repeats):
        for cell in cells:
            result = measure_request(client, measure.make(cell.context), cell)
            out.requests.append(result)
            if progress:
                progress(f"cell {len(out.requests)}/{total} ({cell.key}): {result.server_decode_tps:.1f} tok/s")
    if settings.settle_s:
        time.sleep(settings.settle_s)
    close_window(client, window_start, out)
    out.wall_s = time.perf_counter() - started
    return out


def figures_from(result: WorkloadResult, cells: list[Cell], record_source: RecordSource,
                 spec: bool) -> list[Figure]:
    """Decode tok/s from both sources (the figure of record is gated, the other kept for comparison),
    server prefill tok/s for cells with context, and TTFT."""
    figures: list[Figure] = []
    other: RecordSource = "client" if record_source == "server" else "server"
    for cell in cells:
        rows = [r for r in result.requests if r.cell == cell.key]
        if not rows:
            continue
        by_source = {
            "server": tuple(r.server_decode_tps for r in rows),
            "client": tuple(r.client_decode_tps for r in rows),
        }
        bursts = sum(r.burst for r in rows)
        # max_tokens: the roofline reads the KV cache at the cell's mean context, prompt + half the output
        figures.append(Figure(cell.figure("decode_tps"), "tok/s", True, by_source[record_source], record_source,
                              extra={"max_tokens": cell.max_tokens}))
        figures.append(Figure(
            cell.figure(f"decode_tps_{other}"), "tok/s", True, by_source[other], other, gated=False,
            note=f"{bursts}/{len(rows)} streams arrived in one burst" if bursts else "",
        ))
        figures.append(Figure(cell.figure("ttft_ms"), "ms", False,
                              tuple(1000 * (r.server_ttft_s or float("nan")) for r in rows), "server",
                              gated=False))
        figures.append(Figure(cell.figure("ttft_ms_client"), "ms", False,
                              tuple(1000 * r.client_ttft_s for r in rows), "client", gated=False))
        if cell.context >= 256 and cell.output_name == min(
            (c for c in cells if c.context == cell.context), key=lambda c: c.max_tokens
        ).output_name:
            figures.append(Figure(str(FigureKey("prefill_tps", ctx=cell.context)), "tok/s", True,
                                  tuple(r.server_prefill_tps for r in rows), "server", gated=False))
    if spec and result.spec is not None and result.spec.drafts:
        s = result.spec
        figures.append(Figure("acceptance_length", "tokens", True, (s.mean_acceptance_length,), "server",
                              extra={"per_position": list(s.per_position_rates),
                                     "draft_acceptance_rate": s.draft_acceptance_rate,
                                     "drafts": s.drafts}))
    return figures
