"""The workflow helper's own logic, with scripted session results (no engine, no pytest sessions)."""

from __future__ import annotations

import pytest

from quantgate.errors import QuantgateError
from quantgate.testing import SessionResult, WorkflowError, _counts, check_gate_workflow

OK = SessionResult(0, {"passed": 4, "xfailed": 3}, "4 passed, 3 xfailed")
SLOW = SessionResult(1, {"passed": 1, "failed": 3}, "config 'w4' rel_decode_tps[ctx=0,out=long] regressed: ...")


def scripted(results: list[SessionResult], seen: list[tuple[str, ...]]):
    """Answers the sessions in order, like a gate that works when `results` is OK, OK, SLOW, OK, OK."""
    answers = iter(results)

    def run(*args: str) -> SessionResult:
        seen.append(args)
        return next(answers)
    return run


def test_the_five_steps_in_order() -> None:
    seen: list[tuple[str, ...]] = []
    steps = check_gate_workflow(scripted([OK, OK, SLOW, OK, OK], seen), slower=("--slow",))
    assert seen == [("--update-baselines",), (), ("--slow",), ("--slow", "--update-baselines"), ("--slow",)]
    assert [s.result for s in steps] == [OK, OK, SLOW, OK, OK]


@pytest.mark.parametrize(("results", "step"), [
    ([SessionResult(4, {}, "ERROR: usage")], "'record'"),
    ([OK, SessionResult(1, {"failed": 2}, "no baseline")], "'pass'"),
    ([OK, OK, OK], "'slower fails'"),  # a gate that lets a slower engine through
    ([OK, OK, SessionResult(1, {"failed": 1}, "kernel selection changed")], "'slower fails'"),  # no figure
    ([OK, OK, SLOW, SLOW], "'update'"),
    ([OK, OK, SLOW, OK, SLOW], "'slower passes'"),  # --update-baselines did not take
])
def test_the_first_wrong_step_is_named(results: list[SessionResult], step: str) -> None:
    with pytest.raises(WorkflowError) as err:
        check_gate_workflow(scripted(results, []), slower=("--slow",))
    assert isinstance(err.value, QuantgateError) and f"gate workflow step {step}" in str(err.value)


def test_summary_line_counts() -> None:
    summary = "x\n=========== 1 failed, 4 passed, 3 xfailed in 2.00s ===========\n"
    assert _counts(summary) == {"failed": 1, "passed": 4, "xfailed": 3}
    assert _counts("ERROR: file not found") == {}
