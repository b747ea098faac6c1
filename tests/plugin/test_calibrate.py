"""`quantgate calibrate` end to end on the scripted engine: A/A runs in fresh engines, noise.json written."""

from __future__ import annotations

import json
import sys

import pytest
from plugin_support import HW


def test_calibrate_writes_tolerances_false_alarms_and_power(qg, pytester: pytest.Pytester) -> None:
    out = pytester.run(sys.executable, "-m", "quantgate.cli", "calibrate", "--matrix", "matrix.toml",
                       "--config", "ref", "--config", "w4", "--runs", "2", timeout=240)
    assert out.ret == 0, out.stderr.str()
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
