"""Marks the plugin adds for optional pytest plugins: only where they are loaded (--strict-markers would
reject an unknown mark: issue 10's `'xdist_group' not found in markers configuration option`)."""

from __future__ import annotations

import pytest


def test_config_tests_collect_without_xdist_and_timeout(qg) -> None:
    result = qg("--collect-only", "-q", "-p", "no:xdist", "-p", "no:timeout")
    assert result.ret == 0, result.stdout.str()
    assert "test_gate.py::test_kernel_selection[ref]" in result.stdout.str()


def test_config_tests_get_a_long_timeout_where_pytest_timeout_is_loaded(qg, pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
def pytest_collection_finish(session):
    for item in session.items:
        mark = item.get_closest_marker("timeout")
        print("TIMEOUT", item.name, mark.args if mark else None)
""")
    out = qg("--collect-only", "-q", "-s").stdout.str()
    # the engine's start timeout (900 s) + the CPU budget (900 s) + a model build (1800 s)
    assert "TIMEOUT test_kernel_selection[ref] (3600.0,)" in out, out
