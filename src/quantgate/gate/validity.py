"""Whether a config's measured figures are valid at all, checked before any verdict.

A figure can be measured wrong without any error: a stream that stopped early decodes fewer tokens, a prompt
served from the prefix cache skips its prefill, a starved or saturated client reads a stream late, a kernel
compiled mid-run puts its compile time into one request, a restarted engine measures a cold one. Each of these
moves a figure with no regression behind it (one CI run on a 2-core box read a client decode figure of
80,367 tok/s where the engine decoded ~450: the client got no CPU while the engine ran, and the whole stream
arrived in one burst). A failed check makes every figure of the config INVALID: neither pass nor fail, said
with its reason; `--qg-strict` makes it a failure, and `--update-baselines` refuses to record such figures.

The checks are plain functions over what the workload recorded (unit-tested one by one); `MeasureWatch`
collects what the workload cannot see itself: the engine log written during measurement, the client's CPU
time and the engine's identity.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..measurement import Measurement
    from ..stats import Figure
    from ..workload.grid import Cell, RequestResult, WorkloadResult
    from ..workload.metrics import MetricsSnapshot
    from .baselines import Verdict

# Measured prompts start with a block no other prompt shares (quantgate.workload), so the measured window's
# hit rate is 0 unless something repeats a prompt; 1% leaves room for a chance collision of short blocks.
MAX_PREFIX_HIT_RATE = 0.01
# A client process busy more than this share of a core is saturated: its reads lag the engine's writes, so
# chunks queue in the socket and arrive bunched, and TTFT/ITL/decode timings read the client, not the engine.
MAX_CLIENT_CPU = 0.85
MIN_CPU_WINDOW_S = 1.0  # a shorter window is all overhead (metrics scrapes): its CPU share says nothing
# vLLM's JIT monitor (vllm/utils/jit_monitor.py) warns once per kernel after its warm-up:
# "Triton kernel JIT compilation during inference: _topk_forward. This causes a latency spike; consider
# extending warmup to cover this shape/config." (CuTeDSL and TileLang say the same without "kernel").
JIT_LINE = re.compile(r"JIT compilation during inference: ([^\s.(]+)")


@dataclass(frozen=True)
class Check:
    name: str  # tokens, prefix_cache, client_cpu, burst, jit, engine
    ok: bool
    detail: str = ""  # why it failed (empty when it passed)


@dataclass(frozen=True)
class Validity:
    checks: tuple[Check, ...] = ()

    @property
    def valid(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def reason(self) -> str:
        return "; ".join(c.detail for c in self.checks if not c.ok)

    def to_dict(self) -> dict[str, Any]:
        return {"valid": self.valid, "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                                                for c in self.checks]}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any] | None) -> Validity:
        checks = (body or {}).get("checks") or []
        return cls(tuple(Check(str(c["name"]), bool(c["ok"]), str(c.get("detail", ""))) for c in checks))

    def combined(self, other: Validity, prefix: str) -> Validity:
        """This config's checks plus another's failed ones, named: a ratio to an invalid reference is invalid."""
        failed = tuple(Check(c.name, False, f"{prefix}{c.detail}") for c in other.checks if not c.ok)
        return Validity(self.checks + failed)


# --- the checks --------------------------------------------------------------------------------------------
def check_tokens(requests: Sequence[RequestResult], asked: Mapping[str, int]) -> Check:
    """Every measured request returned exactly the tokens it asked for (ignore_eos): a shorter stream was ended
    by a stop, an EOS the server did not ignore, or a server-side cap (generation_config max_new_tokens)."""
    short = [r for r in requests if r.cell in asked and r.completion_tokens != asked[r.cell]]
    if not short:
        return Check("tokens", True)
    r = short[0]
    return Check("tokens", False, f"{len(short)}/{len(requests)} measured requests returned other than the tokens "
                                  f"asked for (e.g. {r.cell}: {r.completion_tokens} of {asked[r.cell]}): ended by a "
                                  f"stop, an EOS or a server-side max_new_tokens despite ignore_eos")


def check_prefix_cache(hit_rate: float | None) -> Check:
    """The measured window's prefix-cache hit rate is about 0 (None: the server counted no queries)."""
    if hit_rate is None or hit_rate <= MAX_PREFIX_HIT_RATE:
        return Check("prefix_cache", True)
    return Check("prefix_cache", False, f"prefix-cache hit rate {hit_rate:.1%} over the measured window (at most "
                                        f"{MAX_PREFIX_HIT_RATE:.0%}): measured prompts were served from the cache")


def check_client_cpu(cpu_s: float, wall_s: float) -> Check:
    """The client process stayed under MAX_CLIENT_CPU of a core while it measured."""
    if wall_s < MIN_CPU_WINDOW_S or cpu_s / wall_s <= MAX_CLIENT_CPU:
        return Check("client_cpu", True)
    return Check("client_cpu", False, f"the client process was busy {cpu_s / wall_s:.0%} of the measured window "
                                      f"(at most {MAX_CLIENT_CPU:.0%}): a saturated client reads streams late")


def check_bursts(requests: Sequence[RequestResult], gated_cells: Collection[str]) -> Check:
    """No stream behind a gated client figure arrived in one burst (RequestResult.burst: the client got no
    CPU while the engine decoded, then read everything at once)."""
    rows = [r for r in requests if r.cell in gated_cells]
    burst = [r for r in rows if r.burst]
    if not burst:
        return Check("burst", True)
    r = burst[0]
    return Check("burst", False, f"{len(burst)}/{len(rows)} client streams of gated figures arrived in one burst "
                                 f"(e.g. {r.cell}: client decode {r.client_decode_tps:,.0f} tok/s, server "
                                 f"{r.server_decode_tps:,.0f} tok/s): the client was starved of CPU")


def jit_names(log_text: str) -> list[str]:
    """The kernels vLLM says it JIT-compiled during inference, in order, each once."""
    return list(dict.fromkeys(JIT_LINE.findall(log_text)))


def check_jit(log_text: str | None) -> Check:
    """vLLM logged no JIT compile in the log written during measurement (None: no engine log to read)."""
    names = jit_names(log_text or "")
    if not names:
        return Check("jit", True)
    return Check("jit", False, f"vLLM JIT-compiled {', '.join(names)} during measurement (its warm-up did not "
                               f"cover that shape; the compile time is in the figures)")


def check_engine(alive: bool, start_before: float | None, start_after: float | None) -> Check:
    """The engine did not restart: our process still runs, and /metrics' process_start_time_seconds (where
    the server exports it; an attached server or container may restart behind one URL) did not move."""
    if not alive:
        return Check("engine", False, "the engine process is gone after measurement (it died or restarted)")
    if start_before is not None and start_after is not None and start_before != start_after:
        return Check("engine", False, f"the engine restarted during measurement (process_start_time_seconds "
                                      f"{start_before:.0f} -> {start_after:.0f})")
    return Check("engine", True)


def gated_client_cells(cells: Iterable[Cell], figures: Mapping[str, Figure]) -> set[str]:
    """The cells whose figure of record is a gated client decode figure (the burst check's scope)."""
    out = set()
    for cell in cells:
        fig = figures.get(cell.figure("decode_tps"))
        if fig is not None and fig.gated and fig.source == "client":
            out.add(cell.key)
    return out


# --- what the workload cannot see itself ---------------------------------------------------------------------
class MeasureWatch:
    """The engine log, the client's CPU time and the engine's identity over the measured window; also the
    warm-up's last request, whose late compiles ask for one more warm-up round (quantgate.workload.run_grid)."""

    def __init__(self, log_path: Path | None, alive: Callable[[], bool],
                 metrics: Callable[[], MetricsSnapshot] | None = None) -> None:
        self.log_path = log_path
        self.alive = alive
        self.metrics = metrics
        self._mark = 0
        self._start: tuple[int, float, float, float | None] | None = None  # log offset, cpu, wall, start time
        self._end: tuple[int, float, float, float | None] | None = None

    def _log_size(self) -> int:
        try:
            return os.stat(self.log_path).st_size if self.log_path is not None else 0
        except OSError:
            return 0

    def _log_since(self, start: int, end: int | None = None) -> str | None:
        if self.log_path is None:
            return None
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(start)
                data = fh.read() if end is None else fh.read(max(0, end - start))
        except OSError:
            return None
        return data.decode("utf-8", errors="replace")

    def _process_start(self) -> float | None:
        if self.metrics is None:
            return None
        try:
            snapshot = self.metrics()
        except Exception:  # noqa: BLE001 - the request path reports a dead server; here it is just unknown
            return None
        return snapshot.get("process_start_time_seconds") if snapshot.has("process_start_time_seconds") else None

    def _now(self) -> tuple[int, float, float, float | None]:
        # process_time: CPU of every thread of this process (the client, its reader threads, progress screen)
        return self._log_size(), time.process_time(), time.perf_counter(), self._process_start()

    # the warm-up (quantgate.workload.WarmupWatch)
    def warmup_request(self) -> None:
        self._mark = self._log_size()

    def compiled_late(self) -> list[str]:
        """Kernels vLLM JIT-compiled during the last warm-up request."""
        return jit_names(self._log_since(self._mark) or "")

    # the measured window
    def measuring(self) -> None:
        """The measured window starts (the first call counts: a config without the grid starts it later)."""
        if self._start is None:
            self._start = self._now()

    def stop(self) -> None:
        if self._start is not None and self._end is None:
            self._end = self._now()

    def checks(self) -> list[Check]:
        if self._start is None or self._end is None:
            return []
        (log0, cpu0, wall0, boot0), (log1, cpu1, wall1, boot1) = self._start, self._end
        return [check_client_cpu(cpu1 - cpu0, wall1 - wall0), check_jit(self._log_since(log0, log1)),
                check_engine(self.alive(), boot0, boot1)]


def assess(result: WorkloadResult, cells: Sequence[Cell], figures: Mapping[str, Figure],
           watch: MeasureWatch | None) -> Validity:
    """Every check over one config's measurement."""
    checks = [check_tokens(result.requests, {c.key: c.max_tokens for c in cells}),
              check_prefix_cache(result.prefix_cache_hit_rate),
              check_bursts(result.requests, gated_client_cells(cells, figures))]
    if watch is not None:
        checks += watch.checks()
    return Validity(tuple(checks))


def report_lines(verdicts: Iterable[Verdict], measured: Iterable[Measurement] = ()) -> list[str]:
    """One `INVALID: <config>: <reason>` line per config whose figures are invalid, for the terminal summary
    and report.md alike: from its verdicts (their first note is the reason), or its measurement's own checks."""
    reasons: dict[str, str] = {}
    for v in verdicts:
        if v.outcome == "invalid" and v.notes:
            reasons.setdefault(v.config_id, v.notes[0])
    for m in measured:
        if not m.validity.valid:
            reasons.setdefault(m.config.id, m.validity.reason)
    return [f"INVALID: {config_id}: {reason}" for config_id, reason in reasons.items()]
