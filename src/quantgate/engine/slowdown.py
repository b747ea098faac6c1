"""An injected slowdown of known size: a vLLM general plugin that delays every engine step.

It measures the gate's power. vLLM loads `vllm.general_plugins` entry points in every process it starts (the
engine core loads them in EngineCore.__init__, before its busy loop binds the step function); VLLM_PLUGINS
can filter them. `register()` does nothing unless QUANTGATE_INJECT_SLOWDOWN=<fraction> is set; then it wraps
EngineCoreProc._process_engine_step and adds, after each step that ran the model, a delay of s x P, where P is
the step period (the previous step's end to this one's end, the previous delay included). In steady state the
period becomes P = W + s P, i.e. W / (1 - s): tokens per second fall by exactly s, at any speed.

Where the delay goes matters. With async scheduling (vLLM's default) step N+1 is already queued on the GPU
when step N's result comes back, so a CPU sleep there overlaps GPU work and is hidden. On CUDA the delay is
therefore a spin kernel (torch.cuda._sleep) on the engine's own stream (uniproc executor: the model runs in the
engine-core thread, on the stream vLLM set there), which holds back every later kernel in stream order; on
a CPU engine it is a busy wait on the engine-core thread. Not a sleep: a sleeping engine thread gives its core
away, and on a small box (2 cores shared with the API server and the client) it waited for it to come back:
CI read decode 0.476x for 20% asked with time.sleep (and 0.670 in another run). After an idle gap (between
requests) only the step itself counts.

The entry point is declared in pyproject.toml. Where quantgate travels as source (the GPU device), a minimal
`*.dist-info` with entry_points.txt on PYTHONPATH declares it (scripts/gpu/dist_info.sh).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config.environment import EnvVarError, from_env, parse, variable

ENV = variable("inject_slowdown")
# A gap longer than this between one step's end and the next step's start is idle time, not step work.
IDLE_GAP_S = 0.05


class SlowdownError(EnvVarError):
    pass


def fraction_from_env(value: str | None) -> float | None:
    """QUANTGATE_INJECT_SLOWDOWN's value as a fraction in [0, 0.9], None when unset or empty (parsed by
    quantgate.config.environment, the one home of the rule)."""
    try:
        fraction: float | None = parse("inject_slowdown", value)
    except EnvVarError as exc:
        raise SlowdownError(str(exc)) from None
    return fraction


@dataclass
class StepDelay:
    """The arithmetic, apart from vLLM: how long to hold back after a step, given when it started and ended."""

    fraction: float
    idle_gap_s: float = IDLE_GAP_S
    _prev_end: float | None = field(default=None, repr=False)
    _last_delay: float = field(default=0.0, repr=False)

    def delay(self, step_start: float, step_end: float) -> float:
        prev = self._prev_end
        # a CPU delay sits between the previous end and this start: it is period, not idle time
        continuous = prev is not None and step_start - prev - self._last_delay <= self.idle_gap_s
        period = step_end - prev if continuous and prev is not None else step_end - step_start
        return max(0.0, period) * self.fraction

    def after_step(self, step_start: float, step_end: float, executed: bool,
                   hold: Callable[[float], None] = time.sleep) -> float:
        if not executed:  # nothing ran (a batch-queue call that only scheduled nothing): no delay, no period
            return 0.0
        wait = self.delay(step_start, step_end)
        self._prev_end, self._last_delay = step_end, wait
        if wait > 0:
            hold(wait)
        return wait


def gpu_hold() -> Callable[[float], None] | None:
    """A function that queues `seconds` of GPU spin on the current stream, or None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    rate: list[float] = []

    def hold(seconds: float) -> None:
        if not rate:  # SM cycles per second, measured once with events (one sync, at the first step)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.cuda._sleep(20_000_000)
            end.record()
            end.synchronize()
            rate.append(20_000_000 / (start.elapsed_time(end) / 1000.0))
        torch.cuda._sleep(max(1, int(seconds * rate[0])))

    return hold


def cpu_hold(seconds: float) -> None:
    """Hold the engine-core thread for `seconds` without giving its core away (see the module's doc)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def wrap_step(step: Callable[..., Any], delay: StepDelay) -> Callable[..., Any]:
    holder: list[Callable[[float], None]] = []

    def _process_engine_step(self: object, *args: object, **kwargs: object) -> Any:
        t0 = time.perf_counter()
        executed = step(self, *args, **kwargs)
        if not holder:  # decided at the first step: CUDA is initialized by then
            holder.append(gpu_hold() or cpu_hold)
        delay.after_step(t0, time.perf_counter(), bool(executed), holder[0])
        return executed

    _process_engine_step.__qualname__ = getattr(step, "__qualname__", "_process_engine_step")
    _process_engine_step._quantgate_slowdown = delay  # type: ignore[attr-defined]
    return _process_engine_step


def register() -> None:
    """The `vllm.general_plugins` entry point: idempotent, and a no-op without QUANTGATE_INJECT_SLOWDOWN."""
    # the engine process reads its own environment: vLLM starts it, not quantgate
    try:
        fraction = from_env().inject_slowdown
    except EnvVarError as exc:
        raise SlowdownError(str(exc)) from None
    if not fraction:
        return
    # the busy loop lives in EngineCoreProc (the engine-core process), not in the EngineCore base class
    from vllm.v1.engine.core import EngineCoreProc

    current = EngineCoreProc._process_engine_step
    if hasattr(current, "_quantgate_slowdown"):
        return  # loaded twice in one process (vLLM warns plugins may be)
    EngineCoreProc._process_engine_step = wrap_step(current, StepDelay(fraction))
    # stderr, not a logger: vLLM configures only its own loggers, and this line must reach the engine log
    print(f"quantgate: injected slowdown {100 * fraction:.1f}% of every engine step ({ENV})",
          file=sys.stderr, flush=True)
