"""`quantgate calibrate` end to end on the scripted engine: A/A runs in fresh engines, noise.json written."""

from __future__ import annotations

import json
import sys

import pytest
from plugin_support import HW


def test_calibrate_writes_tolerances_false_alarms_and_power(qg, pytester: pytest.Pytester) -> None:
    # no --matrix, no --config: the ini's quantgate_matrix, and its reference plus one config per
    # quantization that runs here (ref, w4; not gpu-only, not broken, which is expected to fail)
    out = pytester.run(sys.executable, "-m", "quantgate.cli", "calibrate", "--runs", "2", timeout=240)
    assert out.ret == 0, out.stderr.str()
    assert "calibrate: configs ref, w4 (pass --config to choose)" in out.stdout.str()
    noise = json.loads((pytester.path / "baselines" / HW / "noise.json").read_text())
    assert noise["k"] == 2 and noise["power"] == 0.8 and noise["configs"] == ["ref", "w4"]
    rel = noise["metrics"]["rel_decode_tps"]
    # the scripted engine's server figures are the same in every session: no noise, so the floor tolerance,
    # no false alarm in the 2 (runs) x 1 (other run) x 2 (cells) trials, and a slowdown just past it caught
    assert rel["tolerance"] == 0.05 and rel["trials"] == 4 and rel["false_alarms"] == 0
    assert rel["detectable_slowdown"] in (0.05, 0.06)  # at the tolerance, give or take float rounding
    assert "rel_decode_tps" in out.stdout.str() and "slowdown caught (80%)" in out.stdout.str()


def test_calibrate_needs_two_runs(qg, pytester: pytest.Pytester) -> None:
    out = pytester.run(sys.executable, "-m", "quantgate.cli", "calibrate", "--matrix", "matrix.toml",
                       "--config", "ref", "--runs", "1")
    assert out.ret == 2 and "--runs 1: an A/A calibration needs at least 2 runs" in out.stderr.str()


def test_calibrate_judges_the_runs_against_the_stored_baseline_of_another_session(
        qg, pytester: pytest.Pytester) -> None:
    qg("--update-baselines", "-k", "w4")
    store = pytester.path / "baselines" / HW
    (store / "ref.json").unlink(missing_ok=True)  # ref: no stored baseline, so not judged across sessions
    w4 = json.loads((store / "w4.json").read_text())
    for name, fig in w4["figures"].items():  # the other session was 15% faster: today's runs are 13% worse
        if name.startswith("rel_decode_tps"):
            fig["median"] *= 1.15
    (store / "w4.json").write_text(json.dumps(w4))
    out = pytester.run(sys.executable, "-m", "quantgate.cli", "calibrate", "--matrix", "matrix.toml",
                       "--config", "ref", "--config", "w4", "--runs", "2", timeout=240)
    assert out.ret == 0, out.stderr.str()
    xs = json.loads((store / "noise.json").read_text())["cross_session"]
    assert xs["no_baseline"] == ["ref"] and xs["baselines"]["w4"]["taken_at"] == w4["taken_at"]
    rel = xs["metrics"]["rel_decode_tps"]
    # 2 runs x 2 cells: all fail at the calibrated 5% floor; none at the matrix's 20%, which the gate used
    # today (read before calibrate wrote its own noise.json)
    assert rel["trials"] == 4 and rel["at_calibrated_tolerance"]["false_alarms"] == 4
    assert rel["at_gate_tolerance"] == {"tolerance": [0.2], "false_alarms": 0, "indeterminate": 0,
                                        "false_alarm_rate": 0.0,
                                        "tolerance_source": "default tolerance (no calibration for this metric)"}
    assert rel["zero_false_alarm_tolerance"] == 0.14  # 1 - 1/1.15 = 13.04%, rounded up
    assert xs["metrics"]["decode_tps"]["trials"] == 4  # w4's figures only: ref's are not counted as passes
    assert "ref: no stored baseline" in out.stdout.str() and "cross-session" in out.stdout.str()
