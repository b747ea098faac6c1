"""Interleaved A/B: one grid measured on several builds' engines at once, their requests alternated cell by cell.

Each slot of the schedule is one (repeat, cell): the same prompt goes to every engine, one after the other, in
the slot's order. The order alternates forward and backward (AB BA AB ...) so that, for every cell, each engine
goes first in half of its slots: a slow drift of the machine (another job starting, a thermal limit, a cache
warming) then touches every engine alike, and the per-slot ratio of two engines (quantgate.paired) carries none
of it. `balanced_order` is the schedule; `run_interleaved` measures it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..config.matrix import WorkloadSettings
from .grid import (
    MEASURE_SEED,
    Cell,
    Client,
    PromptMaker,
    WarmupWatch,
    WorkloadResult,
    close_window,
    measure_request,
    warm_up,
)

WAKE_SEED = 4343


@dataclass(frozen=True)
class Slot:
    repeat: int
    cell: int  # index into the grid's cells
    order: tuple[int, ...]  # engine indexes, in the order they get the slot's prompt


def balanced_order(engines: int, cells: int, repeats: int) -> list[Slot]:
    """Repeats x cells slots, cells inner (as run_grid measures them); slot (r, c) sends forward when r + c is
    even, else backward. Over the repeats of one cell the direction alternates (with an even number of repeats
    each engine goes first equally often), and consecutive cells of one repeat alternate too."""
    if engines < 1 or cells < 0 or repeats < 0:
        raise ValueError(f"balanced_order: engines {engines}, cells {cells}, repeats {repeats}")
    forward = tuple(range(engines))
    return [Slot(r, c, forward if (r + c) % 2 == 0 else forward[::-1]) for r in range(repeats) for c in range(cells)]


def run_interleaved(clients: Sequence[Client], settings: WorkloadSettings, cells: list[Cell], vocab_size: int,
                    watches: Sequence[WarmupWatch | None] | None = None,
                    progress: Callable[[str], None] | None = None, switch_gap_s: float = 0.0, wake: bool = False,
                    sleep: Callable[[float], None] = time.sleep) -> list[WorkloadResult]:
    """The grid on every engine at once: each warmed up in turn, then the balanced schedule's slots. Result i
    belongs to clients[i]; its requests are in slot order, so request j of two results is a pair.
    `switch_gap_s`: a pause before a request that goes to another engine than the one before it, so that the
    engine that just finished has stopped spinning (quantgate.pairing.CPU_SWITCH_GAP_S); `wake`: then one
    unmeasured 2-token request to the engine, so that its measured request finds it awake, as the request before
    it left it (in ABBA the other engine of the slot has just served a request of its own)."""
    started = time.perf_counter()
    watches = list(watches) if watches is not None else [None] * len(clients)
    outs = [WorkloadResult() for _ in clients]

    def engine_progress(i: int) -> Callable[[str], None] | None:
        if progress is None:
            return None
        return lambda text: progress(f"engine {i + 1}/{len(clients)}: {text}")

    for i, (client, watch) in enumerate(zip(clients, watches, strict=True)):
        warm_up(client, settings, cells, vocab_size, outs[i], engine_progress(i), watch)
    for watch in watches:
        if watch is not None:
            watch.measuring()
    window_starts = [client.metrics() for client in clients]
    measure = PromptMaker(vocab_size, MEASURE_SEED)  # one prompt per slot, the same on every engine
    wakers = PromptMaker(vocab_size, WAKE_SEED)  # prompts no warm-up or measured request shares
    schedule = balanced_order(len(clients), len(cells), settings.repeats)
    last: int | None = None
    for n, slot in enumerate(schedule, 1):
        cell = cells[slot.cell]
        prompt = measure.make(cell.context)
        speeds = []
        for i in slot.order:
            if last is not None and i != last:
                if switch_gap_s > 0:
                    sleep(switch_gap_s)
                if wake:
                    clients[i].complete(wakers.make(0), 2, cell="wake")
            last = i
            result = measure_request(clients[i], prompt, cell)
            outs[i].requests.append(result)
            speeds.append(f"{result.server_decode_tps:.1f}")
        if progress:
            progress(f"slot {n}/{len(schedule)} ({cell.key}, engines {'-'.join(str(i + 1) for i in slot.order)}): "
                     f"{' / '.join(speeds)} tok/s")
    if settings.settle_s:
        time.sleep(settings.settle_s)
    wall = time.perf_counter() - started
    for client, start, out in zip(clients, window_starts, outs, strict=True):
        close_window(client, start, out)
        out.wall_s = wall
    return outs
