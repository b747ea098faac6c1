"""quantgate.testing's workflow helper on the scripted engine, as a vLLM fork's CI would call it."""

from __future__ import annotations

import pytest
from plugin_support import HW

from quantgate.testing import check_gate_workflow, pytester_runner


def test_record_pass_slower_fail_update_pass(qg, pytester: pytest.Pytester) -> None:
    steps = check_gate_workflow(pytester_runner(qg), slower=("--qg-serve-arg=--enforce-eager", "--qg-only=w4"))
    assert [s.name for s in steps] == ["record", "pass", "slower fails", "update", "slower passes"]
    slow = steps[2].result
    assert slow is not None and slow.count("failed") == 3  # w4's ratio figures and its kernel snapshot
    assert "rel_decode_tps[ctx=0,out=long]" in slow.output and "enforce_eager: False -> True" in slow.output
    assert (pytester.path / "baselines" / HW / "w4.json").is_file()
