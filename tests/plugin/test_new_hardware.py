"""A machine of a kind without baselines, a config that crawls, and one known to crawl (issue 10 items 1-3),
on the scripted stand-in engine."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
from plugin_support import HW, assert_no_engine_left

SLOW_CONFIGS = """
[[config]]
id = "crawl"
budget_s = 2
env = {{ FAKE_TOKENS_PER_S = "30" }}

[[config]]
id = "slowpoke"
expected_slow = {{ reason = "0.7 tok/s measured on {hw}", hardware = ["{hw}"] }}
"""


def _add_configs(pytester: pytest.Pytester) -> None:
    matrix = pytester.path / "matrix.toml"
    matrix.write_text(matrix.read_text() + SLOW_CONFIGS.format(hw=HW))


@pytest.mark.fault(
    "baselines",
    "no baseline at all for this hardware",
    "one message (hardware, kinds with baselines, the command, how long) and exit 6 before any engine starts",
)
def test_no_baselines_for_this_hardware_stops_before_any_engine(qg, pytester: pytest.Pytester) -> None:
    shutil.rmtree(pytester.path / "baselines" / HW)
    other = pytester.path / "baselines" / "cpu-elsewhere"
    other.mkdir(parents=True)
    (other / "ref.json").write_text(json.dumps({"schema": 1, "config": "ref", "hardware": "cpu-elsewhere",
                                                "figures": {"decode_tps[ctx=0,out=long]": {"median": 100.0}}}))
    (other / "noise.json").write_text("{}")
    started = time.monotonic()
    result = qg("-k", "ref or w4")
    assert result.ret == 6
    out = result.stdout.str()
    assert f"no baselines for this hardware: {HW}" in out
    assert "baselines exist for: cpu-elsewhere" in out
    assert "-m cpu -k 'ref or w4' --update-baselines` (about" in out  # the command as typed, plus the flag
    assert "about 2 min for 2 config(s)" in out  # 104 tokens at cpu-elsewhere's 100 tok/s + 60 s start, twice
    assert not (pytester.path / "pids.txt").exists()  # no engine was started
    assert time.monotonic() - started < 60
    assert "passed" not in out and "failed" not in out


def test_first_update_on_a_new_kind_says_there_is_no_noise_model(qg, pytester: pytest.Pytester) -> None:
    shutil.rmtree(pytester.path / "baselines" / HW)
    result = qg("--update-baselines", "-k", "ref or w4")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines([f"*first baselines for {HW}: this run records 2 config(s); there is no noise "
                                 f"model for {HW} yet*default tolerance (20%)*`quantgate calibrate`*",
                                 f"*no noise model for {HW} yet: run `quantgate calibrate` on this machine*"])
    assert (pytester.path / "baselines" / HW / "ref.json").exists()


@pytest.mark.fault(
    "budget",
    "a config decodes too slowly for its workloads to finish within its budget",
    "its tests fail at once with one line (config, tok/s, time needed, budget); the others still run",
)
def test_crawling_config_fails_within_budget_and_slow_one_is_skipped(qg, pytester: pytest.Pytester) -> None:
    _add_configs(pytester)
    result = qg("--update-baselines", "-rs")
    # ref + w4 recorded (kernel + 2 ratios for w4); crawl's kernel test and 2 ratios fail; slowpoke skipped
    result.assert_outcomes(passed=4, failed=3, skipped=3, xfailed=3)
    out = result.stdout.str()
    line = [ln for ln in out.splitlines() if "BudgetExceeded" in ln and "FAILED" not in ln][0]
    assert "config 'crawl': decode" in line and "tok/s in the probe" in line
    assert "need at least" in line and "over its budget of 2 s" in line
    assert len(re.findall(r"quantgate crawl +starting engine", out)) == 1  # one probe, then every test fails at once
    assert "expected slow on cpu-test: 0.7 tok/s measured on cpu-test" in out
    assert "starting engine 'slowpoke'" not in out
    assert not (pytester.path / "baselines" / HW / "crawl.json").exists()
    assert_no_engine_left(pytester.path)
    # no budget (--qg-budget 0): the crawl finishes and is recorded
    qg("--update-baselines", "--qg-budget", "0", "-k", "crawl").assert_outcomes(passed=3)


def test_budget_option_must_be_a_number_of_seconds(qg, pytester: pytest.Pytester) -> None:
    result = qg("--qg-budget", "-5")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--qg-budget -5: must be a number of seconds >= 0*"])


@pytest.mark.fault("baselines", "CI set, a figure without a baseline", "the figure's test fails, never passes")
def test_under_ci_a_figure_without_baseline_fails(qg, pytester: pytest.Pytester,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    qg("--update-baselines", "-k", "ref").assert_outcomes(passed=1)  # this hardware has baselines, w4 none
    monkeypatch.setenv("CI", "true")
    result = qg("-k", "ref or w4")
    result.assert_outcomes(passed=1, failed=3)
    out = result.stdout.str()
    assert "FAILED test_gate.py::test_figure[w4-rel_decode_tps[ctx=0,out=long]]" in out
    assert "no baseline" in out
    assert result.ret == 1


def test_no_baselines_stop_under_xdist(qg, pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    shutil.rmtree(pytester.path / "baselines" / HW)
    result = qg("-n", "2", "-k", "ref or w4")
    assert result.ret == 6  # the controller stops on the first worker's collection, not an INTERNALERROR
    out = result.stdout.str()
    assert f"no baselines for this hardware: {HW}" in out and "for 2 config(s)" in out
    assert "INTERNALERROR" not in out
    assert not (pytester.path / "pids.txt").exists()


@pytest.mark.fault("budget", "workloads slower than the probe's estimate (per-request latency)",
                   "the config's tests fail once its budget is spent; the others still run")
def test_workloads_stop_when_the_budget_is_spent(qg, pytester: pytest.Pytester) -> None:
    matrix = pytester.path / "matrix.toml"
    # the probe times decode only (104 tokens: well under 6 s); 7 grid requests of 2 s latency take over 14 s
    matrix.write_text(matrix.read_text() + '\n[[config]]\nid = "laggy"\nbudget_s = 6.5\n'
                      'env = { FAKE_LATENCY_S = "2" }\n')
    started = time.monotonic()
    result = qg("--update-baselines", "-k", "laggy or w4")
    # w4: kernels + 2 ratios; laggy: its kernel snapshot (taken before the workloads) passes, its 2 ratios fail
    result.assert_outcomes(passed=4, failed=2)
    out = result.stdout.str()
    assert "BudgetExceeded: config 'laggy': its workloads ran past its budget of 6.5 s" in out
    assert_no_engine_left(pytester.path)
    assert time.monotonic() - started < 90


def test_a_configs_test_timeout_follows_its_budget(qg, pytester: pytest.Pytester) -> None:
    # pytest-timeout must not end a config before its own budget does: --qg-budget 5000 s is allowed, so the
    # first test's limit is start timeout + budget + model build, not a fixed hour
    pytester.makeconftest(
        "def pytest_collection_modifyitems(items):\n"
        "    for item in items:\n"
        "        mark = item.get_closest_marker('timeout')\n"
        "        print('TIMEOUT', item.name, mark.args[0] if mark else None)\n")
    out = qg("--collect-only", "-q", "--qg-budget=5000", "--qg-start-timeout=100").stdout.str()
    limits = {float(ln.split()[2]) for ln in out.splitlines() if ln.startswith("TIMEOUT ")}
    assert limits == {100 + 5000 + 1800.0}, out
    out = qg("--collect-only", "-q", "--qg-budget=0").stdout.str()
    limits = {float(ln.split()[2]) for ln in out.splitlines() if ln.startswith("TIMEOUT ")}
    assert limits == {6 * 3600.0}, out  # no budget: still finite, so a hang ends with a stack
