"""A refresh that cannot write fails the run under pytest-xdist too: the baselines are written by workers,
and their failures must reach the controller's exit code and summary."""

from __future__ import annotations

import shutil

import pytest
from plugin_support import HW, assert_no_engine_left


@pytest.mark.fault("baselines", "unwritable baselines/<hw> under --update-baselines with pytest-xdist (-n 2)",
                   "exit non-zero; the controller's summary names every baseline a worker could not write")
def test_refresh_that_cannot_write_fails_under_xdist(qg, pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    blocker = pytester.path / "baselines" / HW
    shutil.rmtree(blocker)
    blocker.write_text("not a folder\n")  # root ignores file modes: a file where the folder must go
    result = qg("-n", "2", "--update-baselines")
    out = result.stdout.str()
    assert result.ret != 0, out
    result.stdout.fnmatch_lines([f"*REFRESH FAILED: {blocker}/w4.json: not written: FileExistsError*"])
    result.stdout.fnmatch_lines([f"*REFRESH FAILED: {blocker}/ref.json: not written: *Error*"])
    result.stdout.fnmatch_lines([f"*REFRESH FAILED: {blocker}/kernels/test_gate/*ref*.json: not written*"])
    assert "UPDATED" not in out
    assert blocker.read_text() == "not a folder\n"
    assert_no_engine_left(pytester.path)
