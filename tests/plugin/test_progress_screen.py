"""Progress on screen through pytest: stage lines between pytest's own output, never inside its progress line."""

from __future__ import annotations

import re

import pytest

# pytest's line: its prefix, result letters (none yet when a test's progress block began right away)
PYTEST_LINE = re.compile(r"^test_gate\.py [.sxXFE]*(\s+\[\s*\d+%\])?$")


def _check_lines(out: str) -> list[str]:
    lines = out.splitlines()
    ours = [ln for ln in lines if ln.startswith("quantgate ")]
    for ln in lines:
        # a result character or a test id never stands alone or after our text; our text never follows dots
        assert not re.fullmatch(r"[.sxXFE]+(\s+\[\s*\d+%\])?", ln.strip()), f"lone result characters: {ln!r}"
        if re.search(r".quantgate \S+ +(model|starting|engine|warm-up|cell|done)", ln):
            raise AssertionError(f"progress text cut into pytest's line: {ln!r}")
        if ln.startswith("test_gate.py"):
            assert PYTEST_LINE.match(ln), f"pytest's progress line was cut: {ln!r}"
    return ours


def test_plain_progress_lines_sit_between_pytest_lines(qg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTGATE_PROGRESS", "plain")  # what a CI log (no TTY) gets
    result = qg("--update-baselines")
    result.assert_outcomes(passed=4, xfailed=3)
    ours = _check_lines(result.stdout.str())
    text = "\n".join(ours)
    assert re.search(r"quantgate ref +starting engine", text), text
    assert re.search(r"quantgate ref +engine healthy after [\d.]+ s", text), text
    assert re.search(r"quantgate ref +warm-up", text), text
    assert re.search(r"quantgate w4 +cell 6/6 \(ctx=0,out=long\): [\d.]+ tok/s", text), text
    assert re.search(r"quantgate w4 +done: 3 passed", text), text
    assert re.search(r"quantgate broken +done: 3 xfailed", text), text


def test_verbose_run_keeps_each_result_on_its_test_line(qg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTGATE_PROGRESS", "plain")
    out = qg("-v").stdout.str()
    for ln in out.splitlines():
        if re.search(r"\b(PASSED|FAILED|XFAIL|SKIPPED)\b", ln) and "::" in ln and not ln.startswith("FAILED "):
            assert ln.startswith("test_gate.py::"), f"a result away from its test id: {ln!r}"


def test_rich_progress_on_a_forced_terminal(qg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTGATE_PROGRESS", "rich")
    out = qg("--update-baselines").stdout.str()
    assert "\x1b[2K" in out  # rich redraws the line in place
    final = [ln.rsplit("\x1b[2K", 1)[-1] for ln in out.splitlines() if "quantgate w4 " in ln]
    assert any("done · 3 passed" in ln for ln in final), final


def test_progress_off_drops_the_stage_lines_but_keeps_the_messages(qg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTGATE_PROGRESS", "off")
    out = qg("--update-baselines").stdout.str()
    assert not re.search(r"quantgate \S+ +(starting engine|warm-up|cell \d|done)", out), out
    # the budget probe's line says how fast a config decodes and what it needs: it is no stage line
    assert re.search(r"quantgate: 'ref' decodes [\d.e+]+ tok/s in the probe", out), out
