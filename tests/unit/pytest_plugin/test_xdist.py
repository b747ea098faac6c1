"""quantgate.pytest_plugin.xdist in-process: worker verdicts travel on test reports and in workeroutput (pytest
and pytest-xdist's own channels), never through files; the worker's own account has the last word."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from quantgate.gate.baselines import Verdict
from quantgate.pytest_plugin import xdist

V1 = Verdict("a", "decode_tps", "tok/s", "updated", 10.0, None, notes=("vLLM 0.1 -> 0.2",))
V2 = Verdict("b", "decode_tps", "tok/s", "fail", 8.0, 10.0, -0.2, 0.05, "noise", ("k",), 0.01, (0.1, 0.3))


class _Config:
    """The part of pytest.Config these functions use: a stash, and workerinput on a worker."""

    def __init__(self, worker: str | None = None) -> None:
        self.stash = pytest.Stash()
        if worker is not None:
            self.workerinput = {"workerid": worker}


def _state(verdicts: list[Verdict], updated: list[Path] | None = None, failures: list[str] | None = None) -> Any:
    return SimpleNamespace(verdicts=verdicts, updated=updated or [], write_failures=failures or [])


def _report(**extra: Any) -> Any:
    """A TestReport as the controller gets it from a worker (xdist rebuilds it from the serialized dict)."""
    report = pytest.TestReport("t.py::t", ("t.py", 0, "t"), {}, "passed", None, "call")
    report.__dict__.update(extra)
    return report


def test_part_round_trips_through_json() -> None:
    part = xdist.WorkerPart([V1, V2], [Path("/b/a.json")], ["x: not written"])
    assert xdist.WorkerPart.from_json(part.to_json()) == part


def test_reports_carry_what_each_test_added_and_the_controller_collects_it(pytestconfig: pytest.Config) -> None:
    worker, controller = _Config("gw0"), _Config()
    state = _state([V1])
    first = _report()
    xdist.attach_new_part(worker, state, first)
    state.verdicts.append(V2)
    second, quiet = _report(), _report()
    xdist.attach_new_part(worker, state, second)
    xdist.attach_new_part(worker, state, quiet)  # nothing new: no attribute
    assert not hasattr(quiet, xdist.REPORT_ATTR)
    assert xdist.WorkerPart.from_json(getattr(second, xdist.REPORT_ATTR)).verdicts == [V2]

    node = SimpleNamespace(config=controller)
    hook = pytestconfig.hook
    for report in (first, second):  # through pytest's own serialization, as xdist sends a report
        data = hook.pytest_report_to_serializable(config=pytestconfig, report=report)
        data["worker_id"] = "gw0"  # xdist adds it before sending, and sets .node on arrival
        arrived = hook.pytest_report_from_serializable(config=pytestconfig, data=data)
        arrived.node = node
        xdist.pytest_runtest_logreport(arrived)
    merged = _state([])
    xdist.merge_worker_parts(controller, merged)  # a worker that never sent workeroutput (crashed): kept
    assert merged.verdicts == [V1, V2]


def test_reports_on_the_controller_itself_are_ignored() -> None:
    controller = _Config()
    state = _state([V1])
    report = _report()
    xdist.attach_new_part(controller, state, report)  # not a worker: nothing attached
    assert not hasattr(report, xdist.REPORT_ATTR)
    xdist.pytest_runtest_logreport(report)  # no worker_id: nothing collected
    assert controller.stash.get(xdist._PARTS, None) is None


def test_workeroutput_replaces_what_reports_carried() -> None:
    """A baseline that could not be written relabels its verdict after the test's report went out: the
    worker's own account at session end wins, once per worker even when xdist reports it down twice."""
    controller = _Config()
    node_cfg = SimpleNamespace(config=controller)
    carried = xdist.WorkerPart([V1]).to_json()
    xdist.pytest_runtest_logreport(_report(worker_id="gw1", node=node_cfg, **{xdist.REPORT_ATTR: carried}))
    final = xdist.WorkerPart([Verdict("a", "decode_tps", "tok/s", "unwritten", 10.0)], [], ["a.json: not written"])
    node = SimpleNamespace(config=controller, workerinput={"workerid": "gw1"},
                           workeroutput={xdist.OUTPUT_KEY: final.to_json()})
    xdist.pytest_testnodedown(node, None)
    xdist.pytest_testnodedown(node, "keyboard-interrupt")  # Ctrl-C: xdist calls it again
    xdist.pytest_testnodedown(SimpleNamespace(config=controller, workerinput={"workerid": "gw0"}), "crashed")
    xdist.pytest_runtest_logreport(_report(worker_id="gw0", node=node_cfg,
                                           **{xdist.REPORT_ATTR: xdist.WorkerPart([V2]).to_json()}))
    merged = _state([])
    xdist.merge_worker_parts(controller, merged)
    assert [v.outcome for v in merged.verdicts] == ["fail", "unwritten"]  # gw0, then gw1
    assert merged.write_failures == ["a.json: not written"]
