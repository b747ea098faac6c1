"""The extra workloads (llama-benchy pp/tg, concurrency sweep, math accuracy) as generated tests."""

from __future__ import annotations

import json

import pytest
from plugin_support import HW

MATRIX = """
[gate]
mode = "absolute"
default_tolerance = 0.5

[workload]
outputs = {{ short = 8 }}
contexts = [0]
repeats = 2
warmup = 1

[benchy]
pp = [64]
tg = [8]
repeats = 2
warmup = 0
latency_mode = "none"

[concurrency]
levels = [1, 2]
prompt_len = 32
output_len = 8
requests_per_level = 4
warmup = 0

[accuracy]
problems = 200
max_tokens = 4

[[config]]
id = "all"
model = "{model}"
workloads = ["grid", "benchy", "concurrency", "accuracy"]
"""


@pytest.fixture
def workloads(qg, pytester: pytest.Pytester):
    (pytester.path / "matrix.toml").write_text(MATRIX.format(model=pytester.path / "model"))
    return qg


def test_extra_workloads_are_gated_figures(workloads, pytester: pytest.Pytester, monkeypatch) -> None:
    names = workloads("--collect-only", "-q").stdout.str()
    for figure in ("pp_tps[pp=64,depth=0]", "tg_tps[tg=8,depth=0]", "output_tps[c=2]", "math_accuracy",
                   "decode_tps[ctx=0,out=short]"):
        assert f"test_figure[all-{figure}]" in names, figure
    workloads("--update-baselines").assert_outcomes(passed=7)
    base = json.loads((pytester.path / "baselines" / HW / "all.json").read_text())
    # the scripted model solves the "a + b" / "a - b" problems and none of the word problems
    assert base["figures"]["math_accuracy"]["mean"] == 0.805  # deterministic: seed 42
    assert base["figures"]["math_accuracy"]["n"] == 200  # n=50 at 80% is indeterminate: Wilson needs more
    assert "itl_ms_p99[c=2]" in base["figures"] and "ttfr_ms[pp=64,depth=0]" in base["figures"]
    again = workloads("-rA").parseoutcomes()
    # client-timed speed figures of the scripted engine jitter on a busy box: indeterminate is allowed there
    assert again.get("failed", 0) == 0 and again.get("passed", 0) + again.get("xfailed", 0) == 7
    workloads("-k", "math_accuracy").assert_outcomes(passed=1)
    monkeypatch.setenv("FAKE_ACCURACY_WRONG", "1")
    wrong = workloads("-k", "math_accuracy")
    wrong.assert_outcomes(failed=1)
    wrong.stdout.fnmatch_lines(
        ["*config 'all' math_accuracy regressed: baseline 0.805 fraction, measured 0.005 fraction*Wilson 95% bounds*"])


RELATIVE = """
[gate]
mode = "relative"
reference = "ref"

[workload]
outputs = {{ short = 8 }}
contexts = [0]
repeats = 2
warmup = 1

[accuracy]
problems = 200
max_tokens = 4

[defaults]
model = "{model}"

[[config]]
id = "ref"

[[config]]
id = "acc"
workloads = ["accuracy"]
"""


def test_accuracy_only_config_in_a_relative_matrix(qg, pytester: pytest.Pytester) -> None:
    """No grid, so no ratios to the reference: `-k acc` starts only acc's engine, and the report's
    comparison matrix carries the accuracy with its Wilson bounds."""
    (pytester.path / "matrix.toml").write_text(RELATIVE.format(model=pytester.path / "model"))
    names = qg("--collect-only", "-q").stdout.str()
    assert "test_figure[acc-math_accuracy]" in names and "test_figure[acc-rel_decode_tps" not in names
    result = qg("-k", "acc", "--update-baselines")
    result.assert_outcomes(passed=2)  # kernel snapshot + math_accuracy
    assert len((pytester.path / "pids.txt").read_text().split()) == 1  # the reference never started
    report = next((pytester.path / "results").glob("*/report.md")).read_text()
    assert "| Math acc. (95% Wilson) |" in report
    row = next(line for line in report.splitlines() if line.startswith("| acc | bf16 |"))
    assert "| 0.805 (0.755..0.847, n=200) |" in row, row
    assert "Math accuracy: 161/200 correct" in report and "by category: add1 60/60" in report
    assert "Decode tok/s (figure of record" not in report  # no grid, no empty tables


def test_broken_accuracy_request_is_one_failure_line(qg, pytester: pytest.Pytester, monkeypatch) -> None:
    """An AccuracyError (here: a completion that is not JSON) is one clear failure line naming the problem,
    not a traceback through quantgate's internals: every quantgate error shares the QuantgateError root."""
    (pytester.path / "matrix.toml").write_text(RELATIVE.format(model=pytester.path / "model"))
    monkeypatch.setenv("FAKE_ACCURACY_BROKEN", "1")
    result = qg("-k", "acc and math_accuracy")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["*AccuracyError: malformed completion for problem *<html>proxy error*"])
    assert "Traceback" not in out and "raise AccuracyError" not in out and "accuracy.py:" not in out, out
