"""--qg-prestart: every selected engine starts at once, then each config is measured alone.

Runs the plugin through pytester with the scripted stand-in engine (tests/fake_vllm.py), as tests/plugin does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

from plugin_support import assert_no_engine_left, qg  # noqa: E402,F401

pytest_plugins = ["pytester"]


def test_prestart_starts_all_engines_before_the_first_test(qg, pytester: pytest.Pytester) -> None:  # noqa: F811
    qg("--update-baselines").assert_outcomes(passed=4, xfailed=3)
    result = qg("--qg-prestart")
    result.assert_outcomes(passed=4, xfailed=3)  # the broken config still fails its start, as expected
    lines = result.stdout.str().splitlines()
    started = [i for i, ln in enumerate(lines) if "[prestart]" in ln and "starting engine" in ln]
    healthy = [i for i, ln in enumerate(lines) if "[prestart]" in ln and "healthy after" in ln]
    assert len(started) == 3 and len(healthy) == 2  # ref, w4 and broken start; broken never gets healthy
    assert max(started) < min(healthy)  # all launched before any was waited on
    assert_no_engine_left(pytester.path)
