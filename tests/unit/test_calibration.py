import random

import pytest

from quantgate.calibration import Limits, calibrate, slowed, table, trial_pairs
from quantgate.stats import Figure


def runs_of(per_run: list[list[float]], name: str = "decode_tps[c]", higher: bool = True,
            unit: str = "tok/s") -> list[dict[str, Figure]]:
    return [{f"cfg/{name}": Figure(name, unit, higher, tuple(samples))} for samples in per_run]


def test_zero_noise_runs_never_alarm_and_catch_just_above_the_floor() -> None:
    result = calibrate(runs_of([[100, 100, 100]] * 3))["decode_tps"]
    assert result.cv_between_runs == 0 and result.tolerance == 0.05  # clamped at the 5% floor
    assert result.trials == 6 and result.false_alarms == 0 and result.indeterminate == 0
    assert result.detectable_slowdown == 0.06  # the first grid step past the tolerance


def test_known_false_alarms_and_power_with_a_fixed_tolerance() -> None:
    # medians 100, 100, 80 with no spread inside a run; the tolerance is pinned at 10% by sigmas
    runs = runs_of([[100] * 3, [100] * 3, [80] * 3])
    limits = Limits(sigmas=0.0, min_tolerance=0.10, max_tolerance=0.10, power=0.8)
    result = calibrate(runs, limits)["decode_tps"]
    # 6 ordered pairs: the 80 run measured against either 100 baseline fails (-20% > 10%): 2 of 6
    assert result.false_alarms == 2 and result.trials == 6
    assert result.false_alarm_rate == pytest.approx(1 / 3)
    # 5 of 6 must fail: the 100 runs against the 80 baseline need 100 (1 - s) < 72, so s = 29%
    assert result.detectable_slowdown == 0.29


def test_very_noisy_runs_give_wide_tolerance_and_large_detectable_slowdown() -> None:
    rng = random.Random(7)
    per_run = [[m * rng.uniform(0.9, 1.1) for _ in range(3)] for m in (100, 180, 60, 140, 90)]
    quiet = calibrate(runs_of([[100, 101, 99]] * 5))["decode_tps"]
    noisy = calibrate(runs_of(per_run))["decode_tps"]
    assert noisy.tolerance == 0.60  # clamped at the ceiling
    assert noisy.detectable_slowdown is None or noisy.detectable_slowdown > 0.6
    assert quiet.detectable_slowdown is not None and quiet.detectable_slowdown < 0.1
    assert "decode_tps" in table({"decode_tps": noisy}, 0.8)


def test_latency_is_slowed_upwards_and_figures_are_kept_apart_by_config() -> None:
    lat = Figure("ttft_ms[c]", "ms", False, (10.0, 20.0))
    assert slowed(lat, 0.5).samples == (15.0, 30.0)
    assert slowed(Figure("decode_tps[c]", "tok/s", True, (10.0,)), 0.5).samples == (5.0,)
    runs = [{"a/x[c]": Figure("x[c]", "ms", False, (1.0,)), "b/x[c]": Figure("x[c]", "ms", False, (9.0,))}] * 2
    assert len(trial_pairs(runs, "a/x[c]")) == 2
    # two configs with very different speeds are not mistaken for run-to-run noise
    assert calibrate(runs)["x"].cv_between_runs == 0


def test_accuracy_and_single_run_figures_are_left_out() -> None:
    runs = runs_of([[1, 0, 1]] * 3, name="math_accuracy", unit="fraction")
    runs[0]["cfg/only_once[c]"] = Figure("only_once[c]", "tok/s", True, (5.0,))
    assert calibrate(runs) == {}
